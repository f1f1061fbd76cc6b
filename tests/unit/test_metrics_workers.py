"""One set of metrics over `--workers`: workers' snapshots added to the parent's families. No sockets."""

from __future__ import annotations

import json

import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.credentials.cache import FetchOutcome
from proxy.forwarding import RequestRecord, UpstreamExchange
from proxy.metrics import Metrics, Snapshot, combine, snapshot_from_wire, totals_only
from proxy.upstream.pool import PoolStats


def served(metrics: Metrics, front: str, status: int, seconds: float, times: int = 1) -> None:
    for _ in range(times):
        metrics.observe_request(RequestRecord(front, "POST", "/", "e", status, seconds, 0, "rid"), "e")


def worker(requests: int, open_connections: int) -> Metrics:
    metrics = Metrics()
    served(metrics, "http", 200, 0.002, requests)
    metrics.observe_exchange(UpstreamExchange("e", 200, 0.001, 0.002, True))
    metrics.observe_retry("e", "throttled")
    metrics.watch_in_flight("http", lambda: 1)
    metrics.watch_pools(lambda: [PoolStats("h:443", open=open_connections, idle=1)])
    return metrics


def sent(metrics: Metrics) -> Snapshot:
    """A snapshot as the parent receives it: through JSON and checked."""
    return snapshot_from_wire(json.loads(json.dumps(metrics.snapshot())))


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in found, f"{key} exposed twice"
            found[key] = sample.value
    return found


def test_counters_and_histograms_are_totals_and_the_gauges_sums() -> None:
    parent = Metrics()
    served(parent, "grpc", 200, 0.004, 2)  # the gRPC front stays in the parent
    parent.watch_in_flight("http", lambda: 0)
    parent.watch_pools(lambda: [])  # the parent's own pools (gRPC front): none open here
    parent.observe_token_fetch(FetchOutcome("data_plane", "e", True, 1_900_000_000.0, None))
    one, two = worker(3, open_connections=2), worker(4, open_connections=5)

    got = samples(parent.exposition([sent(one), sent(two)]).decode())

    def value(name: str, **labels: str) -> float:
        return got[(name, tuple(sorted(labels.items())))]

    assert value("serving_sidecar_requests_total", endpoint="e", front="http", code="200") == 7
    assert value("serving_sidecar_requests_total", endpoint="e", front="grpc", code="200") == 2
    assert value("serving_sidecar_request_duration_seconds_count", endpoint="e", front="http") == 7
    assert value("serving_sidecar_request_duration_seconds_bucket", endpoint="e", front="http", le="0.0025") == 7
    assert value("serving_sidecar_request_duration_seconds_sum", endpoint="e", front="http") == pytest.approx(0.014)
    assert value("serving_sidecar_upstream_request_duration_seconds_count", endpoint="e") == 2
    assert value("serving_sidecar_in_flight_requests", front="http") == 2
    assert value("serving_sidecar_upstream_connections", host="h:443", state="open") == 7
    assert value("serving_sidecar_upstream_connections", host="h:443", state="idle") == 2
    # the parent's alone: one build, one token fetch (workers fetch none)
    assert value("serving_sidecar_build_info", version=parent_version(got)) == 1
    assert value("serving_sidecar_token_fetches_total", kind="data_plane", result="success") == 1


def parent_version(got: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> str:
    (version,) = [dict(labels)["version"] for name, labels in got if name == "serving_sidecar_build_info"]
    return version


def test_without_workers_the_exposition_is_the_registry_s() -> None:
    metrics = worker(1, 1)
    assert metrics.exposition() == metrics.exposition([])


def test_an_exited_worker_leaves_its_totals_but_not_its_gauges() -> None:
    gone = sent(worker(5, open_connections=3))
    retired = combine([{}, totals_only(gone)])
    assert "serving_sidecar_in_flight_requests" not in retired
    assert "serving_sidecar_upstream_connections" not in retired
    again = combine([retired, totals_only(sent(worker(2, 1)))])
    (total,) = [v for name, _, v in again["serving_sidecar_requests"] if name == "serving_sidecar_requests_total"]
    assert total == 7
    retries = again["serving_sidecar_retries"]
    assert [v for name, _, v in retries if name == "serving_sidecar_retries_total"] == [2]
    created = [v for name, _, v in retries if name == "serving_sidecar_retries_created"]  # the earliest is kept
    assert created == [min(v for name, _, v in gone["serving_sidecar_retries"] if name.endswith("_created"))]


@pytest.mark.parametrize(
    "doc",
    [
        [],
        {"serving_sidecar_token_fetches": []},  # the parent's own family: a worker never reports it
        {"serving_sidecar_requests": [["serving_sidecar_requests_total", {}, float("nan")]]},
        {"serving_sidecar_requests": [["serving_sidecar_requests_total", {"code": 200}, 1]]},
        {"serving_sidecar_requests": [["serving_sidecar_requests_total", {}]]},
    ],
)
def test_malformed_snapshots_are_refused(doc: object) -> None:
    with pytest.raises(ValueError):
        snapshot_from_wire(doc)
