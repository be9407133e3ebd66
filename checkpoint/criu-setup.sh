#!/bin/sh
# Ensure a CRIU of version 4 or later that passes `criu check` (issue 4, `make setup`).
#
# The distribution's CRIU when it is good enough; otherwise CRIU 4.1.1 built from Debian trixie's
# source tarball (checked against the sha256 in the signed Sources index), with the patches
# beside this script, and installed as /usr/local/sbin/criu. Cached: once a good CRIU is there
# this takes a `criu check` (~0.1 s).
#
# criu-rlimits.patch: CRIU reads a task's rlimits with prlimit(), which for another user's task
# needs CAP_SYS_RESOURCE; nodes in containers and sandboxes lack it, and this one does. The patch
# falls back to /proc/PID/limits.
# criu-pipe-size.patch: for the same reason a pipe cannot grow past fs.pipe-max-size (1 MiB); CRIU's
# page server then kept its 64 KiB default for the pipe it tee()s pages into, and post-copy (lazy
# pages) failed at the first request larger than that. The patch takes the largest size allowed.
set -eu

here=$(cd "$(dirname "$0")" && pwd)

VERSION=4.1.1
PREFIX=/usr/local
CACHE=/var/cache/xos/criu
BUILD_DEPS="libprotobuf-c-dev libprotobuf-dev protobuf-c-compiler libnl-3-dev libnet1-dev libcap-dev \
libbsd-dev libgnutls28-dev libaio-dev uuid-dev pkg-config python3-protobuf gcc make xz-utils patch iptables"

good() {  # $1: a criu binary; succeeds when it is version >= 4 and passes `criu check`
    [ -x "$1" ] || return 1
    major=$("$1" --version 2>/dev/null | sed -n 's/^Version: \([0-9]*\)\..*/\1/p')
    [ -n "$major" ] && [ "$major" -ge 4 ] && "$1" check >/dev/null 2>&1
}

patches=$(cat "$here"/criu-*.patch | sha256sum | cut -c1-16)
stamp="$CACHE/installed-$VERSION-$patches"
# Ours when it is the build of these patches; else the distribution's; else build.
for c in "$PREFIX/sbin/criu" "$(command -v criu || true)"; do
    [ "$c" = "$PREFIX/sbin/criu" ] && [ ! -f "$stamp" ] && continue
    if [ -n "$c" ] && good "$c"; then
        echo "criu: $c ($("$c" --version | sed -n 's/^Version: //p')) passes criu check"
        exit 0
    fi
done

echo "criu: no CRIU >= 4 passing criu check here; building $VERSION from Debian's source tarball"
missing=$(for p in $BUILD_DEPS; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || echo "$p"; done)
if [ -n "$missing" ]; then
    apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
fi

mkdir -p "$CACHE"
tarball="$CACHE/criu_$VERSION.orig.tar.xz"
apt_dir=$(mktemp -d)
chmod 755 "$apt_dir"  # apt downloads as the _apt user
trap 'rm -rf "$apt_dir"' EXIT
# A deb-src entry for trixie in a private apt state: the machine's own sources stay untouched.
cat >"$apt_dir/trixie-src.sources" <<EOF
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
mkdir -p "$apt_dir/lists/partial"
apt_opts="-o Dir::Etc::sourcelist=$apt_dir/trixie-src.sources -o Dir::Etc::sourceparts=/nonexistent \
-o Dir::State::Lists=$apt_dir/lists -o Dir::Cache=$apt_dir/cache"
# shellcheck disable=SC2086
apt-get $apt_opts -qq update
# shellcheck disable=SC2086
want=$(apt-cache $apt_opts showsrc criu | sed -n "s/^ \([0-9a-f]\{64\}\) [0-9]* criu_$VERSION.orig.tar.xz$/\1/p" | head -1)
[ -n "$want" ] || { echo "criu: trixie's Sources index lists no criu_$VERSION.orig.tar.xz" >&2; exit 1; }
if [ ! -f "$tarball" ] || [ "$(sha256sum "$tarball" | cut -d' ' -f1)" != "$want" ]; then
    # `apt-get source` may fetch the tarball yet fail on the .dsc; the tarball's checksum decides.
    # shellcheck disable=SC2086
    (cd "$apt_dir" && apt-get $apt_opts -qq source --download-only "criu/trixie" >/dev/null 2>&1 || true)
    [ -f "$apt_dir/criu_$VERSION.orig.tar.xz" ] || { echo "criu: could not download criu_$VERSION.orig.tar.xz" >&2; exit 1; }
    mv "$apt_dir/criu_$VERSION.orig.tar.xz" "$tarball"
fi
got=$(sha256sum "$tarball" | cut -d' ' -f1)
[ "$got" = "$want" ] || { echo "criu: $tarball has sha256 $got, the Sources index says $want" >&2; rm -f "$tarball"; exit 1; }

src="$apt_dir/src"
mkdir -p "$src"
tar -C "$src" -xf "$tarball"
for p in "$here"/criu-*.patch; do
    patch -d "$src/criu-$VERSION" -p1 -s <"$p"
done
make -C "$src/criu-$VERSION" -j"$(nproc)" criu >"$CACHE/build.log" 2>&1 || {
    echo "criu: build failed; see $CACHE/build.log" >&2
    tail -20 "$CACHE/build.log" >&2
    exit 1
}
install -D -m 0755 "$src/criu-$VERSION/criu/criu" "$PREFIX/sbin/criu"
good "$PREFIX/sbin/criu" || { echo "criu: the built $PREFIX/sbin/criu fails criu check:" >&2; "$PREFIX/sbin/criu" check >&2; exit 1; }
rm -f "$CACHE"/installed-*
touch "$stamp"
echo "criu: $PREFIX/sbin/criu ($VERSION) built and installed; criu check passes"
