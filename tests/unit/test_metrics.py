"""Metrics on an injected registry: names, labels and the scrape-time pool collector. No sockets."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from proxy import __version__
from proxy.credentials.cache import FetchOutcome
from proxy.forwarding import RequestRecord, UpstreamExchange, header_block
from proxy.metrics import LATENCY_BUCKETS, Metrics
from proxy.upstream.pool import ConnectAttempt, PoolStats


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_each_instance_has_its_own_registry() -> None:
    one, two = Metrics(), Metrics()
    one.observe_retry("a", "throttled")
    assert value(one, "serving_sidecar_retries_total", endpoint="a", reason="throttled") == 1
    assert value(two, "serving_sidecar_retries_total", endpoint="a", reason="throttled") is None


def test_latency_buckets_span_one_millisecond_to_five_minutes() -> None:
    assert LATENCY_BUCKETS[0] == 0.001 and LATENCY_BUCKETS[-1] == 300
    assert list(LATENCY_BUCKETS) == sorted(LATENCY_BUCKETS)


def test_requests_and_durations_per_front(metrics: Metrics) -> None:
    for front, status, seconds in (("http", 200, 0.002), ("http", 503, 0.5), ("grpc", 200, 0.004)):
        metrics.observe_request(RequestRecord(front, "POST", "/", "raw-name", status, seconds, 0, "rid"), "e")
    assert value(metrics, "serving_sidecar_requests_total", endpoint="e", front="http", code="200") == 1
    assert value(metrics, "serving_sidecar_requests_total", endpoint="e", front="http", code="503") == 1
    assert value(metrics, "serving_sidecar_requests_total", endpoint="e", front="grpc", code="200") == 1
    count = "serving_sidecar_request_duration_seconds_count"
    assert value(metrics, count, endpoint="e", front="http") == 2
    bucket = "serving_sidecar_request_duration_seconds_bucket"
    assert value(metrics, bucket, endpoint="e", front="http", le="0.0025") == 1


def test_upstream_exchange_feeds_both_histograms(metrics: Metrics) -> None:
    metrics.observe_exchange(UpstreamExchange("e", 200, first_byte_seconds=0.02, seconds=1.5, complete=True))
    assert value(metrics, "serving_sidecar_time_to_first_byte_seconds_bucket", endpoint="e", le="0.025") == 1
    assert value(metrics, "serving_sidecar_upstream_request_duration_seconds_bucket", endpoint="e", le="1.0") == 0
    assert value(metrics, "serving_sidecar_upstream_request_duration_seconds_sum", endpoint="e") == 1.5


def test_tokens_connects_and_resolutions(metrics: Metrics) -> None:
    metrics.observe_token_fetch(FetchOutcome("data_plane", "e", True, 1_900_000_000.0, None))
    metrics.observe_token_fetch(FetchOutcome("workspace", "", False, None, "invalid_client"))
    metrics.observe_connect(ConnectAttempt("h:443", "success"))
    metrics.observe_connect(ConnectAttempt("h:443", "tls_error"))
    metrics.observe_resolution("not_found")
    assert value(metrics, "serving_sidecar_token_fetches_total", kind="data_plane", result="success") == 1
    assert value(metrics, "serving_sidecar_token_fetches_total", kind="workspace", result="failure") == 1
    expiry = "serving_sidecar_token_expiry_timestamp_seconds"
    assert value(metrics, expiry, kind="data_plane", endpoint="e") == 1_900_000_000.0
    assert value(metrics, "serving_sidecar_upstream_connects_total", host="h:443", result="tls_error") == 1
    assert value(metrics, "serving_sidecar_endpoint_resolutions_total", result="not_found") == 1
    assert value(metrics, "serving_sidecar_build_info", version=__version__) == 1


def test_pool_gauges_are_read_at_scrape_time(metrics: Metrics) -> None:
    pools = [PoolStats("a:443", open=3, idle=1)]
    metrics.watch_pools(lambda: pools)
    assert value(metrics, "serving_sidecar_upstream_connections", host="a:443", state="open") == 3
    assert value(metrics, "serving_sidecar_upstream_connections", host="a:443", state="idle") == 1
    pools.append(PoolStats("b:443", open=0, idle=0))
    pools[0] = PoolStats("a:443", open=5, idle=5)
    assert value(metrics, "serving_sidecar_upstream_connections", host="a:443", state="idle") == 5
    assert value(metrics, "serving_sidecar_upstream_connections", host="b:443", state="open") == 0
    assert b"# TYPE serving_sidecar_upstream_connections gauge" in metrics.exposition()


def test_the_callers_authorization_request_id_and_hop_by_hop_headers_are_not_forwarded() -> None:
    block = header_block(
        [("X-Request-Id", "from-caller"), ("Authorization", "Bearer x"), ("Connection", "close"), ("X-Tag", "t")]
    )
    assert block == b"X-Tag: t\r\nContent-Type: application/json\r\nAccept: application/json\r\n"
    own = header_block([(b"content-type", b"text/csv"), (b"ACCEPT", b"*/*")])
    assert own == b"content-type: text/csv\r\nACCEPT: */*\r\n"
