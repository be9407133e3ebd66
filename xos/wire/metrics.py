"""Prometheus metrics of a daemon: requests, errors and latencies by operation, counted where every request
passes (codec.error_middleware, on aiohttp's server and the lean one alike), and whatever gauges the daemon
adds (store and queue sizes), as the text exposition format at GET /metrics.

Names follow Prometheus's conventions: `xos_ROLE_requests_total{op}`, `xos_ROLE_errors_total{op,code}`,
`xos_ROLE_request_duration_seconds{op}` (a histogram), base units, `_total` on counters.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from aiohttp import web

# Request latencies, seconds: a metadata call is a fraction of a millisecond, an image transfer minutes.
BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
           30.0, 60.0)

Labels = tuple[tuple[str, str], ...]
Sample = tuple[dict[str, str], float]


@dataclass
class Family:
    """One metric as it is exposed: its samples come from a collector at each scrape."""

    name: str
    kind: str  # counter | gauge
    help: str
    collect: Callable[[], Iterable[Sample]]


@dataclass
class Histogram:
    """Observations counted into BUCKETS, per label set."""

    counts: dict[Labels, list[int]] = field(default_factory=dict)
    sums: dict[Labels, float] = field(default_factory=dict)

    def observe(self, labels: Labels, value: float) -> None:
        """Count `value` for `labels`."""
        counts = self.counts.get(labels)
        if counts is None:
            counts = self.counts[labels] = [0] * (len(BUCKETS) + 1)
            self.sums[labels] = 0.0
        counts[bisect.bisect_left(BUCKETS, value)] += 1
        self.sums[labels] += value


class Registry:
    """The metrics of one daemon (`role`: node, vo, aem, mrc, osd)."""

    def __init__(self, role: str) -> None:
        self.role = role
        self._lock = threading.Lock()  # the lean server answers from worker threads too
        self._requests: dict[Labels, int] = {}
        self._errors: dict[Labels, int] = {}
        self._latency = Histogram()
        self._families: list[Family] = []
        self._histograms: dict[str, tuple[str, Histogram]] = {}

    def observe(self, op: str, seconds: float, code: str | None = None) -> None:
        """One request of operation `op` that took `seconds`; `code`: the stable code of its failure."""
        key: Labels = (("op", op),)
        with self._lock:
            self._requests[key] = self._requests.get(key, 0) + 1
            if code is not None:
                ekey = (("op", op), ("code", code))
                self._errors[ekey] = self._errors.get(ekey, 0) + 1
            self._latency.observe(key, seconds)

    def gauge(self, name: str, helptext: str, collect: Callable[[], Iterable[Sample]], kind: str = "gauge") -> None:
        """Expose `xos_ROLE_NAME`, its samples from `collect` at each scrape."""
        self._families.append(Family(f"xos_{self.role}_{name}", kind, helptext, collect))

    def histogram(self, name: str, helptext: str) -> Callable[[float], None]:
        """Expose histogram `xos_ROLE_NAME`; the function that observes one value."""
        h = Histogram()
        self._histograms[f"xos_{self.role}_{name}"] = (helptext, h)

        def observe(value: float) -> None:
            with self._lock:
                h.observe((), value)

        return observe

    def text(self) -> str:
        """The text exposition format (version 0.0.4)."""
        out: list[str] = []
        prefix = f"xos_{self.role}"
        with self._lock:
            requests, errors = dict(self._requests), dict(self._errors)
            hists = {name: (helptext, {k: list(v) for k, v in h.counts.items()}, dict(h.sums))
                     for name, (helptext, h) in {**self._histograms,
                                                 f"{prefix}_request_duration_seconds":
                                                     ("Time to answer a request, by operation.", self._latency)}
                     .items()}
        _family(out, f"{prefix}_requests_total", "counter", "Requests answered, by operation.",
                [(dict(k), float(v)) for k, v in sorted(requests.items())])
        _family(out, f"{prefix}_errors_total", "counter", "Requests that failed, by operation and error code.",
                [(dict(k), float(v)) for k, v in sorted(errors.items())])
        for name, (helptext, counts, sums) in hists.items():
            out.append(f"# HELP {name} {_help(helptext)}")
            out.append(f"# TYPE {name} histogram")
            for labels in sorted(counts):
                running = 0
                for bound, n in zip((*BUCKETS, float("inf")), counts[labels], strict=True):
                    running += n
                    le = "+Inf" if bound == float("inf") else repr(bound)
                    out.append(f"{name}_bucket{_labels({**dict(labels), 'le': le})} {running}")
                out.append(f"{name}_sum{_labels(dict(labels))} {sums[labels]!r}")
                out.append(f"{name}_count{_labels(dict(labels))} {running}")
        for fam in self._families:
            _family(out, fam.name, fam.kind, fam.help, list(fam.collect()))
        return "\n".join(out) + "\n"


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return "{" + inner + "}"


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _family(out: list[str], name: str, kind: str, helptext: str, samples: list[Sample]) -> None:
    out.append(f"# HELP {name} {_help(helptext)}")
    out.append(f"# TYPE {name} {kind}")
    for labels, value in samples:
        out.append(f"{name}{_labels(labels)} {float(value)!r}")


METRICS: web.AppKey[Registry] = web.AppKey("metrics", Registry)


def of(request: object) -> Registry | None:
    """The registry of the app serving `request` (aiohttp's or the lean server's), if it has one."""
    app = getattr(request, "app", None)
    if isinstance(app, web.Application):
        return app.get(METRICS)
    return getattr(app, "metrics", None)


def operation(request: object, ok: bool) -> str:
    """The operation a request is counted under: its route's pattern with the method, or, for a request that
    succeeded, the verb its route names (the MRC's /v1/volumes/{v}/fs/{op}, a job's /v1/jobs/{id}/{verb}): a
    made-up verb is refused and counted under the pattern, so no client can add labels at will.
    `unmatched` for what no route took."""
    info = getattr(request, "match_info", None)
    verb = (info.get("op") or info.get("verb")) if info else None
    method = getattr(request, "method", "")
    if ok and isinstance(verb, str) and verb.isidentifier() and len(verb) <= 40:
        return verb
    route = getattr(info, "route", None)
    pattern = getattr(getattr(route, "resource", None), "canonical", None) or getattr(request, "route", None)
    return f"{method} {pattern}" if pattern else "unmatched"


def handler(registry: Registry) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The GET /metrics handler of an app."""
    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=registry.text().encode(),
                            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    return metrics
