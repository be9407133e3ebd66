"""Job descriptions (JSON or YAML): parsed and validated whole, every error reported with its field."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from xos import units
from xos.aem.classad import BadExpression, Matchmaker, Wants
from xos.errors import InvalidInput, XosError

MAX_TEXT = 1 << 20
MAX_COUNT = 10000
KNOWN = {"name", "executable", "arguments", "environment", "stdin", "stdout", "stderr", "resources", "requirements",
         "rank", "after", "checkpointable", "checkpoint_interval", "count", "token", "volumes"}
RESOURCES = {"cpus", "memory", "egress", "ingress", "walltime"}
JOB_ID = re.compile(r"^[0-9]+(\.[0-9]+)?$")  # a job, or one member of an array: 12 or 12.3
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class BadJob(InvalidInput):
    """A job description with errors; `detail["errors"]` lists each as {field, reason}."""

    code = "bad-job"


@dataclass(frozen=True)
class Dependency:
    job: str
    when: str  # "success": the job must end done; "finish": any end


@dataclass(frozen=True)
class JobSpec:
    """A validated job description."""

    executable: str
    arguments: tuple[str, ...] = ()
    environment: tuple[tuple[str, str], ...] = ()
    stdin: str = ""
    stdout: str = ""
    stderr: str = ""
    cpus: float = 1.0
    memory: int = 256 << 20
    egress: int = 0
    ingress: int = 0
    walltime: float = 0.0  # seconds; 0: none
    requirements: str = "true"
    rank: str = "0"
    after: tuple[Dependency, ...] = ()
    checkpointable: bool = False
    checkpoint_interval: float = 0.0
    count: int = 1
    name: str = ""
    token: str = ""
    volumes: tuple[str, ...] = ()  # grid volumes mounted at /run/xos-work/grid/VOLUME
    extra: dict[str, Any] = field(default_factory=dict)

    def wants(self) -> Wants:
        """What the job asks of a node, for the matchmaker (HTCondor's Request* attributes as MY)."""
        attrs = (("RequestCpus", self.cpus), ("RequestMemory", self.memory >> 20),
                 ("Checkpointable", self.checkpointable), ("Cmd", self.executable))
        return Wants(self.requirements, self.rank, attrs)

    def to_json(self) -> dict[str, Any]:
        return {"executable": self.executable, "arguments": list(self.arguments),
                "environment": dict(self.environment), "stdin": self.stdin, "stdout": self.stdout,
                "stderr": self.stderr,
                "resources": {k: v for k, v in (("cpus", self.cpus), ("memory", self.memory), ("egress", self.egress),
                                                ("ingress", self.ingress), ("walltime", self.walltime)) if v},
                "requirements": self.requirements, "rank": self.rank,
                "after": [{"job": d.job, "when": d.when} for d in self.after],
                "checkpointable": self.checkpointable, "checkpoint_interval": self.checkpoint_interval,
                "count": self.count, "name": self.name, "token": self.token, "volumes": list(self.volumes)}


def load(text: str | bytes) -> dict[str, Any]:
    """The object a job file holds: JSON, or YAML when it is not JSON."""
    if isinstance(text, bytes):
        try:
            text = text.decode()
        except UnicodeDecodeError:
            raise BadJob("job description is not UTF-8 text", errors=[{"field": "", "reason": "not UTF-8"}]) from None
    if len(text) > MAX_TEXT:
        raise BadJob(f"job description over {MAX_TEXT} bytes", errors=[{"field": "", "reason": "too large"}])
    try:
        data = json.loads(text)
    except json.JSONDecodeError as je:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as ye:
            where = f"line {je.lineno}" if text.lstrip().startswith("{") else str(ye).splitlines()[-1].strip()
            raise BadJob(f"job description is neither JSON nor YAML ({where})",
                         errors=[{"field": "", "reason": "does not parse"}]) from None
    if not isinstance(data, dict):
        raise BadJob("a job description is an object (a mapping of fields)",
                     errors=[{"field": "", "reason": "not an object"}])
    return data


GRID = "grid://"
VOLUME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def grid_path(where: str) -> tuple[str, str] | None:
    """(volume, path) of a grid FS location `grid://VOLUME/path`; None for a node-side one."""
    if not where.startswith(GRID):
        return None
    volume, _, path = where[len(GRID):].partition("/")
    return volume, "/" + path


def _stdio_problem(where: str, stdin: bool = False) -> str | None:
    """Why `where` is no place for a job's stdin, stdout or stderr, or None when it is one."""
    grid = grid_path(where)
    if grid is not None:
        volume, path = grid
        if not VOLUME.match(volume):
            return f"names no volume ({GRID}VOLUME/path)"
        parts = path.split("/")[1:]
        if not parts[-1] or any(p in ("", ".", "..") for p in parts):
            return "must name a file of the volume, without . or .. or empty components"
        return None
    if len(where) > 4096:
        return "is longer than 4096 characters"
    if stdin and not where.startswith("/"):
        return f"must be an absolute path on the node or {GRID}VOLUME/path (the job's directory starts empty)"
    if where in (".", "..") or (not where.startswith("/") and "/" in where):
        return (f"must be a file name (in the job's directory), an absolute path on the node, or "
                f"{GRID}VOLUME/path on the grid file system")
    return None


def parse(data: dict[str, Any], matchmaker: Matchmaker | None = None) -> JobSpec:
    """A JobSpec from a job description's object; BadJob listing every error with its field."""
    errors: list[dict[str, str]] = []

    def bad(name: str, reason: str) -> None:
        errors.append({"field": name, "reason": reason})

    def text(name: str, default: str = "", required: bool = False) -> str:
        v = data.get(name, None)
        if v is None:
            if required:
                bad(name, "is required")
            return default
        if not isinstance(v, str) or "\0" in v:
            bad(name, "must be a string")
            return default
        return v

    for k in sorted(set(data) - KNOWN):
        bad(k, "is not a field of a job description")
    executable = text("executable", required=True)
    if executable == "" and "executable" in data and isinstance(data["executable"], str):
        bad("executable", "must not be empty")
    args = data.get("arguments", [])
    if isinstance(args, str):
        args = args.split()
    if not isinstance(args, list) or not all(isinstance(a, str) and "\0" not in a for a in args):
        bad("arguments", "must be a list of strings")
        args = []
    env = data.get("environment", {})
    if not isinstance(env, dict) or not all(isinstance(v, (str, int, float)) for v in env.values()):
        bad("environment", "must map names to strings")
        env = {}
    for k in env:
        if not isinstance(k, str) or not ENV_NAME.match(k):
            bad(f"environment.{k}", "is not a variable name")
    res = data.get("resources", {})
    if not isinstance(res, dict):
        bad("resources", "must be an object")
        res = {}
    for k in sorted(set(res) - RESOURCES):
        bad(f"resources.{k}", f"is not a resource (use {', '.join(sorted(RESOURCES))})")
    values: dict[str, Any] = {}
    for k, conv, default in (("cpus", units.parse_cpus, 1.0), ("memory", units.parse_size, 256 << 20),
                             ("egress", units.parse_rate, 0), ("ingress", units.parse_rate, 0),
                             ("walltime", units.parse_duration, 0.0)):
        if k not in res:
            values[k] = default
            continue
        try:
            values[k] = conv(res[k])
            if values[k] < 0 or (k in ("cpus", "memory") and values[k] == 0):
                raise InvalidInput("must be positive")
        except (XosError, TypeError, ValueError) as e:
            bad(f"resources.{k}", getattr(e, "message", str(e)))
            values[k] = default
    requirements = text("requirements", "true") or "true"
    rank = text("rank", "0") or "0"
    mm = matchmaker or Matchmaker()
    for name, value in (("requirements", requirements), ("rank", rank)):
        try:
            mm.check(Wants(**{name: value}))  # type: ignore[arg-type]
        except BadExpression as e:
            bad(name, e.message.removeprefix(f"{name} "))
    after: list[Dependency] = []
    raw_after = data.get("after", [])
    if not isinstance(raw_after, list):
        bad("after", "must be a list of job ids (ID, or {job: ID, when: success|finish})")
        raw_after = []
    for i, dep in enumerate(raw_after):
        job, when = (dep, "success") if isinstance(dep, (str, int)) else (
            (dep.get("job"), dep.get("when", "success")) if isinstance(dep, dict) else (None, None))
        if not isinstance(job, (str, int)) or not JOB_ID.match(str(job)):
            bad(f"after[{i}]", "names no job id")
        elif when not in ("success", "finish"):
            bad(f"after[{i}].when", "must be success or finish")
        else:
            after.append(Dependency(str(job), when))
    ckpt = data.get("checkpointable", False)
    if not isinstance(ckpt, bool):
        bad("checkpointable", "must be true or false")
        ckpt = False
    interval = 0.0
    if "checkpoint_interval" in data:
        try:
            interval = units.parse_duration(data["checkpoint_interval"])
        except (XosError, TypeError, ValueError) as e:
            bad("checkpoint_interval", getattr(e, "message", str(e)))
        if interval and not ckpt:
            bad("checkpoint_interval", "needs checkpointable: true")
    count = data.get("count", 1)
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_COUNT:
        bad("count", f"must be a whole number from 1 to {MAX_COUNT}")
        count = 1
    name = text("name")
    token = text("token")
    if len(token) > 128:
        bad("token", "must be at most 128 characters")
    volumes = data.get("volumes", [])
    if not isinstance(volumes, list) or not all(isinstance(v, str) and VOLUME.match(v) for v in volumes) \
            or len(set(volumes)) != len(volumes):
        bad("volumes", "must be a list of distinct volume names")
        volumes = []
    stdio = {k: text(k) for k in ("stdin", "stdout", "stderr")}
    for k, where in stdio.items():
        why = _stdio_problem(where, k == "stdin") if where else None
        if why:
            bad(k, why)
    if errors:
        first = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise BadJob(f"job description: {first['field'] or 'file'}: {first['reason']}{more}", errors=errors)
    return JobSpec(executable=executable, arguments=tuple(args), environment=tuple((k, str(v)) for k, v in env.items()),
                   stdin=stdio["stdin"], stdout=stdio["stdout"], stderr=stdio["stderr"], cpus=values["cpus"],
                   memory=values["memory"], egress=values["egress"], ingress=values["ingress"],
                   walltime=values["walltime"], requirements=requirements, rank=rank, after=tuple(after),
                   checkpointable=ckpt, checkpoint_interval=interval, count=count, name=name, token=token,
                   volumes=tuple(volumes))
