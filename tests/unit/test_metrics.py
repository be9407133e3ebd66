"""A daemon's metrics registry: what it writes is what Prometheus parses, histograms are cumulative, and a
request's labels are bounded by the routes, whatever a client sends."""

from __future__ import annotations

from types import SimpleNamespace

from prometheus_client.parser import text_string_to_metric_families

from xos.wire import metrics


def parsed(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_requests_errors_and_latencies_by_operation_parse_as_prometheus_writes_them() -> None:
    reg = metrics.Registry("mrc")
    for seconds in (0.0002, 0.003, 0.003, 7.0):
        reg.observe("create", seconds)
    reg.observe("create", 0.01, "file-exists")
    reg.gauge("files", 'Files "with" quotes\nand lines.', lambda: [({"volume": 'a"b\\c'}, 12.0)])
    seen = reg.histogram("matchmaking_seconds", "Passes.")
    seen(0.05)
    got = parsed(reg.text())
    assert got[("xos_mrc_requests_total", (("op", "create"),))] == 5
    assert got[("xos_mrc_errors_total", (("code", "file-exists"), ("op", "create")))] == 1
    assert got[("xos_mrc_request_duration_seconds_bucket", (("le", "0.00025"), ("op", "create")))] == 1
    assert got[("xos_mrc_request_duration_seconds_bucket", (("le", "0.005"), ("op", "create")))] == 3
    assert got[("xos_mrc_request_duration_seconds_bucket", (("le", "+Inf"), ("op", "create")))] == 5
    assert got[("xos_mrc_request_duration_seconds_count", (("op", "create"),))] == 5
    assert abs(got[("xos_mrc_request_duration_seconds_sum", (("op", "create"),))] - 7.0162) < 1e-9
    assert got[("xos_mrc_files", (("volume", 'a"b\\c'),))] == 12
    assert got[("xos_mrc_matchmaking_seconds_count", ())] == 1


def test_a_request_is_counted_under_its_route_and_a_made_up_verb_adds_no_label() -> None:
    ok = SimpleNamespace(method="POST", route="/v1/volumes/{volume}/fs/{op}", match_info={"op": "create"})
    assert metrics.operation(ok, True) == "create"
    bogus = SimpleNamespace(method="POST", route="/v1/volumes/{volume}/fs/{op}", match_info={"op": "x" * 30})
    assert metrics.operation(bogus, False) == "POST /v1/volumes/{volume}/fs/{op}"
    assert metrics.operation(SimpleNamespace(method="GET", match_info={}), False) == "unmatched"
