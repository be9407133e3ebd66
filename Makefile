# xos: `make demo` and `make test` work on a fresh Debian 12 machine, as root.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := python3 python3-venv python3-dev gcc libc6-dev make iproute2 util-linux runc libpam0g-dev \
	pamtester keyutils iptables fuse3 libfuse3-3 libfuse3-dev liburing-dev libisal-dev libssl-dev pkg-config sshfs openssh-server \
	autoconf automake perl postgresql
STAMP := $(VENV)/.xos-setup
NATIVE := $(wildcard native/*.py native/*/*.c native/*/*.h native/*/*.pyx native/decl/*.py pam/*.c pam/*.h pam/*.map)

.PHONY: setup apt criu fuse-uring test lint demo bench fsx clean

setup: $(STAMP) criu fuse-uring

# CRIU >= 4 passing `criu check`: the distribution's, else built once from Debian's source tarball.
criu: | apt
	sh checkpoint/criu-setup.sh

# FUSE over io_uring (Linux 6.14+, off unless asked for): grid mounts then take their requests through a
# ring per CPU (native/fs/fuseuring.c). On now and at every boot; a kernel without it keeps /dev/fuse.
URING := /sys/module/fuse/parameters/enable_uring
fuse-uring:
	@modprobe fuse 2>/dev/null || true
	@if [ -w $(URING) ]; then \
		echo Y > $(URING); mkdir -p /etc/tmpfiles.d /etc/modprobe.d; \
		echo 'w $(URING) - - - - Y' > /etc/tmpfiles.d/xos-fuse-uring.conf; \
		echo 'options fuse enable_uring=1' > /etc/modprobe.d/xos-fuse-uring.conf; \
	else echo "fuse-uring: this kernel has no FUSE over io_uring; mounts use /dev/fuse"; fi

# Idempotent and quick when nothing changed: apt only for packages that are missing, the build only
# when the project or its native sources changed.
apt:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "apt: installing$$(echo ' '$$missing)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

$(STAMP): pyproject.toml setup.py $(NATIVE) | apt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -U pip "setuptools>=74" "cython>=3" "cffi>=1.17" wheel
	$(PY) -m pip install -q --disable-pip-version-check --no-build-isolation -e '.[test]'
	touch $(STAMP)

lint: setup
	$(VENV)/bin/ruff check xos tests bench fs checkpoint
	$(VENV)/bin/mypy xos fs checkpoint

test: setup lint
	$(PY) -m pytest tests

demo: setup
	$(PY) -m xos.demo

BENCH_PACKAGES := slurm-wlm munge

bench: setup
	@missing=$$(for p in $(BENCH_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "apt: installing$$(echo ' '$$missing) (peers of the benchmarks)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	$(PY) bench/workspace.py --out bench/out/workspace.json
	$(PY) bench/identity.py --out bench/out/identity.json
	$(PY) bench/checkpoint.py --out bench/out/checkpoint.json
	$(PY) bench/fs.py --db postgresql --out bench/out/fs.json
	$(PY) bench/fsx.py --ops 200000 --out bench/out/fsx.json
	$(PY) bench/aem.py --db postgresql --out bench/out/aem.json
	$(PY) bench/takeover.py --out bench/out/takeover.json

# The file system's random-operation model for millions of operations (make test runs 10,000 per volume).
FSX_OPS ?= 1000000
fsx: setup
	$(PY) bench/fsx.py --ops $(FSX_OPS) --out bench/out/fsx-long.json

clean:
	rm -rf $(VENV) build *.egg-info native/*.so native/node/cgstat.c native/xos-init
