"""ClassAds and matchmaking with HTCondor's own language (its `classad2` bindings), so an HTCondor
user's `requirements` and `rank` work unchanged.

A match is symmetric as in HTCondor: the job's requirements hold with MY = job and TARGET = node,
and the node's own (its `Requirements`, if it has any) with MY = node and TARGET = job. Jobs that
ask the same of the same ads form one autocluster and are matched once, as HTCondor's negotiator
does: a thousand identical jobs cost one pass over the ads, not a thousand.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from xos.errors import InvalidInput, XosError

try:
    import classad2
except ImportError:  # pragma: no cover - the package is a dependency; say so if it is missing
    classad2 = None


class BadExpression(InvalidInput):
    """A requirements or rank expression that does not parse."""

    code = "bad-expression"


def _lib() -> Any:
    if classad2 is None:
        raise InvalidInput("HTCondor's classad2 module is missing: pip install htcondor")
    return classad2


def expr(text: str, what: str = "expression") -> Any:
    """A parsed ClassAd expression; BadExpression naming `what` if it does not parse."""
    if not isinstance(text, str) or not text.strip():
        raise BadExpression(f"{what} must be a non-empty ClassAd expression", field=what)
    try:
        return _lib().ExprTree(text)
    except Exception as e:  # classad2 raises ClassAdException / ValueError for syntax errors
        raise BadExpression(f"{what} does not parse: {text[:80]!r} ({e})", field=what) from None


def ad(attrs: Mapping[str, Any]) -> Any:
    """A ClassAd of plain values (numbers, strings, booleans, lists); strings under `exprs` stay expressions."""
    lib = _lib()
    out = lib.ClassAd()
    for k, v in attrs.items():
        out[k] = v
    return out


@dataclass(frozen=True)
class Wants:
    """What a job asks of a node: requirements, rank, and the attributes both refer to as MY."""

    requirements: str = "true"
    rank: str = "0"
    attrs: tuple[tuple[str, Any], ...] = ()

    @property
    def key(self) -> str:
        """The job's autocluster: jobs with equal keys match the same nodes in the same order."""
        return json.dumps([self.requirements, self.rank, list(self.attrs)], sort_keys=True, default=str)


@dataclass
class NodeAd:
    """A node's advertisement: its attributes, and its own requirements on jobs (optional)."""

    name: str
    attrs: dict[str, Any]
    requirements: str = ""
    _ad: Any = field(default=None, repr=False)

    @classmethod
    def of(cls, attrs: Mapping[str, Any]) -> NodeAd:
        """A node's ad as it sends it (JSON, its Requirements as expression text)."""
        rest = {k: v for k, v in attrs.items() if k != "Requirements"}
        return cls(str(attrs.get("Name", "")), rest, str(attrs.get("Requirements", "")))

    @classmethod
    def checked(cls, name: str, attrs: Any) -> NodeAd:
        """Node `name`'s ad as it sent it (pushed or fetched), InvalidInput unless it is a JSON object that
        matching can evaluate: one node's garbage must not stop matching for the others."""
        if not isinstance(attrs, dict):
            raise InvalidInput(f"ad of node {name} is not a JSON object")
        try:
            ad = cls.of(attrs)
            ad.classad()  # what matching will evaluate: refused now if it cannot be
        except XosError as e:
            raise InvalidInput(f"ad of node {name}: {e.message}") from None
        except (TypeError, ValueError) as e:
            raise InvalidInput(f"ad of node {name} is not a ClassAd: {e}") from None
        ad.name = name
        return ad

    def classad(self) -> Any:
        if self._ad is None:
            a = ad(self.attrs)
            if self.requirements:
                a["Requirements"] = expr(self.requirements, f"requirements of node {self.name}")
            self._ad = a
        return self._ad


@dataclass(frozen=True)
class Match:
    """A node that matches, with the job's rank of it."""

    node: str
    rank: float


class Matchmaker:
    """Symmetric matching and ranking of jobs against node ads, one evaluation per autocluster and ad."""

    def __init__(self) -> None:
        self._parsed: dict[str, tuple[Any, Any, Any]] = {}

    def _prepare(self, wants: Wants) -> tuple[Any, Any, Any]:
        hit = self._parsed.get(wants.key)
        if hit is None:
            job = ad(dict(wants.attrs))
            hit = (job, expr(wants.requirements, "requirements"), expr(wants.rank, "rank"))
            if len(self._parsed) > 4096:
                self._parsed.clear()
            self._parsed[wants.key] = hit
        return hit

    def check(self, wants: Wants) -> None:
        """Parse a job's expressions now (at submission), so a bad one is refused, not queued."""
        self._prepare(wants)

    def matches(self, wants: Wants, nodes: Iterable[NodeAd], symmetric: bool = True) -> list[Match]:
        """The nodes a job matches, best rank first (ties by name); `symmetric=False` asks only the job's
        side (a query of the ads, not a job the nodes must admit)."""
        job, req, rank = self._prepare(wants)
        out = []
        for node in nodes:
            target = node.classad()
            if req.eval(job, target) is not True:
                continue
            theirs = target.get("Requirements") if symmetric else None
            if theirs is not None and theirs.eval(target, job) is not True:
                continue
            value = rank.eval(job, target)
            out.append(Match(node.name, float(value) if isinstance(value, (int, float)) else 0.0))
        out.sort(key=lambda m: (-m.rank, m.node))
        return out

    def match_all(self, jobs: Iterable[tuple[str, Wants]], nodes: list[NodeAd]) -> dict[str, list[Match]]:
        """Matches for many jobs: each autocluster evaluated once against the ads."""
        by_cluster: dict[str, list[Match]] = {}
        out = {}
        for job_id, wants in jobs:
            found = by_cluster.get(wants.key)
            if found is None:
                found = by_cluster[wants.key] = self.matches(wants, nodes)
            out[job_id] = found
        return out

    def why_not(self, wants: Wants, nodes: Iterable[NodeAd]) -> str:
        """Why a job matches no node, in words: how many ads there are and which side refuses."""
        job, req, _ = self._prepare(wants)
        total = refused_by_job = refused_by_node = 0
        for node in nodes:
            total += 1
            target = node.classad()
            if req.eval(job, target) is not True:
                refused_by_job += 1
                continue
            theirs = target.get("Requirements")
            if theirs is not None and theirs.eval(target, job) is not True:
                refused_by_node += 1
        if total == 0:
            return "no node advertises itself"
        return (f"of {total} node(s), {refused_by_job} fail the job's requirements ({wants.requirements}) "
                f"and {refused_by_node} refuse the job")
