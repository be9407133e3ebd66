"""The public pjdfstest POSIX suite run in a directory, its failures sorted by cause.

A grid mount holds one member's credential: the suite's steps that act as other local users
(`-u 65534 -g 65534 ...`) or give files to uids and gids that are no grid identity (`chown F 65534 -1`)
cannot do what they do on a local disk, and neither can the steps that then look at what those did.
`run` separates those from every other failure; DEVELOPERS.md lists them with the reason.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field

BUILD = "/var/tmp/pjdfstest-build"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# ids the suite uses for "another user": no grid identity on a mount
FOREIGN_IDS = re.compile(r"(?<![0-9])6553[1-4](?![0-9])")
NOT_OK = re.compile(r"^not ok (\d+)(?: - tried '(.*)', expected (.*), got (.*))?$")
NAME = re.compile(r"(pjdfstest_[0-9a-f]{32}|[0-9a-f]{40,}x?)")


def source() -> str:
    """Where the suite's source is: $XOS_PJDFSTEST, else the shared tools beside the project."""
    for where in (os.environ.get("XOS_PJDFSTEST", ""), os.path.join(REPO, "..", "shared", "tools", "pjdfstest"),
                  "/work/shared/tools/pjdfstest"):
        if where and os.path.isfile(os.path.join(where, "pjdfstest.c")):
            return os.path.realpath(where)
    raise RuntimeError("the pjdfstest suite is missing: set XOS_PJDFSTEST to its source "
                       "(../shared/tools/pjdfstest on the project's machines)")


def build() -> str:
    """The suite built once (as ../shared/tools/run-pjdfstest builds it); its directory."""
    if os.access(os.path.join(BUILD, "pjdfstest"), os.X_OK):
        return BUILD
    for tool in ("autoreconf", "gcc", "make", "perl"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"building pjdfstest needs {tool} (make setup installs it)")
    tmp = tempfile.mkdtemp(prefix="pjdfstest-build-", dir=os.path.dirname(BUILD))
    shutil.copytree(source(), tmp, dirs_exist_ok=True)
    for argv in (["autoreconf", "-ifs"], ["./configure"], ["make", "pjdfstest"]):
        subprocess.run(argv, cwd=tmp, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        os.rename(tmp, BUILD)
    except OSError:  # built meanwhile by another run
        shutil.rmtree(tmp, ignore_errors=True)
    return BUILD


@dataclass
class Failure:
    test: str  # e.g. "rename/09.t"
    number: int
    command: str  # what the step tried ("" for a comparison step without a message)
    expected: str
    got: str

    def line(self) -> str:
        what = self.command or "(a comparison)"
        return f"{self.test} {self.number}: {what}: expected {self.expected}, got {self.got}"


@dataclass
class Result:
    assertions: int = 0
    identity: list[Failure] = field(default_factory=list)  # the steps a mount's single identity cannot do
    other: list[Failure] = field(default_factory=list)  # everything else: the file system's own


def identity_step(command: str) -> bool:
    """Whether a step acts as another user or gives a file to ids that are no grid identity."""
    words = command.split()
    for i, w in enumerate(words):
        if w in ("-u", "-g") and i + 1 < len(words) and any(x != "0" for x in words[i + 1].split(",")):
            return True
        if w in ("chown", "lchown", "fchown", "fchownat") and any(
                x not in ("0", "-1") for x in words[i + 2:i + 4] if x.lstrip("-").isdigit()):
            return True
    return False


def classify(test: str, output: str) -> tuple[int, list[Failure], list[Failure]]:
    """(assertions, identity-dependent failures, other failures) of one test file's TAP output.

    A failure is identity-dependent if its step is one (identity_step), if what it expected names one of
    the foreign ids, or if it touches a name an identity-dependent step failed on earlier in the file (the
    name then holds what the local disk would not: a file not given away, not removed, not renamed); a
    comparison step without a message, if the failure before it was."""
    plan = re.search(r"^1\.\.(\d+)", output, re.M)
    count = int(plan.group(1)) if plan else 0
    tainted: set[str] = set()
    identity: list[Failure] = []
    other: list[Failure] = []
    last_identity = False
    for raw in output.splitlines():
        m = NOT_OK.match(raw.strip())
        if not m or "# TODO" in raw:
            continue
        f = Failure(test, int(m.group(1)), m.group(2) or "", m.group(3) or "", m.group(4) or "")
        names = set(NAME.findall(f.command))
        if f.command:
            dependent = (identity_step(f.command) or bool(FOREIGN_IDS.search(f.expected))
                         or bool(names & tainted))
        else:
            dependent = last_identity
        if dependent:
            tainted |= names
            identity.append(f)
        else:
            other.append(f)
        last_identity = dependent
    return count, identity, other


def run(directory: str, groups: list[str] | None = None, workers: int = 4) -> Result:
    """Run the suite's test files (all, or those of `groups` such as "rename") in fresh directories under
    `directory`, `workers` files at a time (its steps sleep a second before each time comparison)."""
    where = build()
    tests = os.path.join(where, "tests")
    groups = groups or sorted(g for g in os.listdir(tests) if os.path.isdir(os.path.join(tests, g)))
    files = [f"{g}/{t}" for g in groups for t in sorted(os.listdir(os.path.join(tests, g))) if t.endswith(".t")]

    def one(name: str) -> str:
        work = tempfile.mkdtemp(prefix="pjd.", dir=directory)
        os.chmod(work, 0o755)
        try:
            return subprocess.run(["sh", os.path.join(tests, name)], cwd=work, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  timeout=600).stdout
        finally:
            shutil.rmtree(work, ignore_errors=True)

    result = Result()
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for name, output in zip(files, pool.map(one, files), strict=True):
            count, identity, other = classify(name, output)
            result.assertions += count
            result.identity += identity
            result.other += other
    return result
