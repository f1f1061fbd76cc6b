"""Prometheus instruments, created on an injected registry; the only prometheus_client user.

Label values come only from configuration and bounded sets: endpoint names that resolved (or were
configured), fronts (http, grpc), status codes, token kinds, upstream hosts the sidecar resolved (the
workspace and route-optimized data-plane hosts) and fixed reason/result enums. A name that did not
resolve is counted as `UNRESOLVED`, never as the raw path.

Other modules never see prometheus_client: they call the `observe_*` methods (or hand them as hooks)
with frozen details, and pool gauges are read at scrape time from a `PoolStats` source.

With `--workers N` every worker process keeps a `Metrics` of its own and hands the parent a `Snapshot`
(plain JSON-able samples) of the families in WORKER_FAMILIES; the parent's exposition adds them to its
own, so there is one set of metrics with the names and labels of a single process:
- counters and histograms (WORKER_TOTALS) are totals over all processes, the exited ones included;
- `in_flight_requests` and `upstream_connections` (WORKER_GAUGES) are sums: requests being served and
  connections held by all processes now;
- the rest (token fetches and expiry, resolutions, readiness, build info) comes from the parent alone,
  which is the only process that fetches tokens and resolves names.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from proxy import __version__
from proxy.credentials.cache import FetchOutcome
from proxy.forwarding import RequestRecord, UpstreamExchange
from proxy.upstream.pool import ConnectAttempt, PoolStats

UNRESOLVED = "unresolved"
CONTENT_TYPE = CONTENT_TYPE_LATEST
# 1 ms .. 5 min: local hops are ~1 ms, models may run up to Databricks' 297 s limit.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

WORKER_TOTALS = frozenset(
    {
        "serving_sidecar_requests",
        "serving_sidecar_request_duration_seconds",
        "serving_sidecar_upstream_request_duration_seconds",
        "serving_sidecar_time_to_first_byte_seconds",
        "serving_sidecar_upstream_connects",
        "serving_sidecar_retries",
    }
)
WORKER_GAUGES = frozenset({"serving_sidecar_in_flight_requests", "serving_sidecar_upstream_connections"})
WORKER_FAMILIES = WORKER_TOTALS | WORKER_GAUGES

Sample = tuple[str, dict[str, str], float]  # sample name, labels, value
Snapshot = dict[str, list[Sample]]  # family name -> its samples; JSON-able (tuples become lists)
_Key = tuple[str, tuple[tuple[str, str], ...]]


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.in_flight = Gauge("serving_sidecar_in_flight_requests", "Requests being served now", ["front"], registry=r)
        self.token_fetches = Counter(
            "serving_sidecar_token_fetches",
            "Token requests to the workspace token endpoint",
            ["kind", "result"],
            registry=r,
        )
        self.token_expiry = Gauge(
            "serving_sidecar_token_expiry_timestamp_seconds",
            "Unix time the current token expires",
            ["kind", "endpoint"],
            registry=r,
        )
        self.resolutions = Counter(
            "serving_sidecar_endpoint_resolutions",
            "Endpoint metadata lookups by result",
            ["result"],
            registry=r,
        )
        self.upstream_connects = Counter(
            "serving_sidecar_upstream_connects",
            "New upstream connections (TCP + TLS) by host and result (success, timeout, tls_error, error)",
            ["host", "result"],
            registry=r,
        )
        self.retries = Counter(
            "serving_sidecar_retries",
            "Upstream sends repeated, by endpoint and reason",
            ["endpoint", "reason"],
            registry=r,
        )
        self.ready = Gauge("serving_sidecar_ready", "1 when the sidecar is ready to serve", registry=r)
        build = Gauge("serving_sidecar_build_info", "Build information", ["version"], registry=r)
        build.labels(version=__version__).set(1)
        # Per-request figures are plain counts, rendered at scrape time: no lock, no `labels()` per request.
        self._traffic = _Traffic()
        r.register(self._traffic)

    def observe_token_fetch(self, outcome: FetchOutcome) -> None:
        self.token_fetches.labels(kind=outcome.kind, result="success" if outcome.ok else "failure").inc()
        if outcome.expires_at is not None:
            self.token_expiry.labels(kind=outcome.kind, endpoint=outcome.label).set(outcome.expires_at)

    def observe_resolution(self, result: str) -> None:
        self.resolutions.labels(result=result).inc()

    def observe_request(self, record: RequestRecord, label: str) -> None:
        """Front hook: one answered request; `label` is its endpoint's metric label."""
        traffic = self._traffic
        pair = (label, record.front)
        counts = traffic.requests.get(pair)
        if counts is None:
            counts = traffic.requests[pair] = {}
            traffic.durations[pair] = _Histogram()
        status = record.status
        counts[status] = counts.get(status, 0) + 1
        traffic.durations[pair].observe(record.seconds)

    def observe_exchange(self, exchange: UpstreamExchange) -> None:
        """Forwarder hook: one upstream answer relayed (or abandoned)."""
        traffic = self._traffic
        pair = traffic.exchanges.get(exchange.endpoint)
        if pair is None:
            pair = traffic.exchanges[exchange.endpoint] = (_Histogram(), _Histogram())
        pair[0].observe(exchange.seconds)
        pair[1].observe(exchange.first_byte_seconds)

    def watch_in_flight(self, front: str, count: Callable[[], float]) -> None:
        """Export `in_flight_requests{front}` from `count()`, read at each scrape."""
        self.in_flight.labels(front=front).set_function(count)

    def observe_retry(self, endpoint: str, reason: str) -> None:
        """A request sent upstream once more; `reason` is a fixed word (unauthorized, endpoint_recreated, ...)."""
        self.retries.labels(endpoint=endpoint, reason=reason).inc()

    def observe_connect(self, attempt: ConnectAttempt) -> None:
        """Upstream hook: a new connection opened, or failed to."""
        self.upstream_connects.labels(host=attempt.host, result=attempt.result).inc()

    def watch_pools(self, stats: Callable[[], Iterable[PoolStats]]) -> None:
        """Export `serving_sidecar_upstream_connections{host, state}` from `stats()`, read at each scrape."""
        self.registry.register(_PoolCollector(stats))

    def snapshot(self) -> Snapshot:
        """This process's share of the families other processes add up (WORKER_FAMILIES)."""
        return {family.name: _samples(family) for family in self.registry.collect() if family.name in WORKER_FAMILIES}

    def exposition(self, others: Sequence[Snapshot] = ()) -> bytes:
        """The text exposition; `others` (workers' snapshots) are added to the families this registry defines."""
        if not others:
            return generate_latest(self.registry)
        merged = CollectorRegistry(auto_describe=False)
        merged.register(_Merged(self.registry, others))
        return generate_latest(merged)


def combine(snapshots: Iterable[Snapshot]) -> Snapshot:
    """Samples of the same name and labels added up (`_created` timestamps: the earliest). Pure."""
    values: dict[str, dict[_Key, tuple[dict[str, str], float]]] = {}
    for snapshot in snapshots:
        for family, samples in snapshot.items():
            if family in WORKER_FAMILIES:
                _add(values.setdefault(family, {}), samples)
    return {
        family: [(key[0], labels, value) for key, (labels, value) in found.items()] for family, found in values.items()
    }


def totals_only(snapshot: Snapshot) -> Snapshot:
    """The counters and histograms of `snapshot`: what an exited worker leaves behind (its gauges are gone)."""
    return {family: samples for family, samples in snapshot.items() if family in WORKER_TOTALS}


def snapshot_from_wire(doc: Any) -> Snapshot:
    """A Snapshot from decoded JSON, checked: families of WORKER_FAMILIES only, finite numbers, string labels."""
    if not isinstance(doc, dict):
        raise ValueError("a metrics snapshot is a JSON object")
    snapshot: Snapshot = {}
    for family, samples in doc.items():
        if family not in WORKER_FAMILIES or not isinstance(samples, list):
            raise ValueError(f"unexpected metric family {family!r} in a snapshot")
        snapshot[family] = [_sample_from_wire(sample) for sample in samples]
    return snapshot


def _sample_from_wire(sample: Any) -> Sample:
    name, labels, value = sample
    if not isinstance(name, str) or not isinstance(labels, dict) or not isinstance(value, int | float):
        raise ValueError(f"malformed metric sample {sample!r}")
    if not math.isfinite(value) or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise ValueError(f"malformed metric sample {sample!r}")
    return name, labels, float(value)


def _samples(family: Metric) -> list[Sample]:
    return [(sample.name, dict(sample.labels), sample.value) for sample in family.samples]


def _add(found: dict[_Key, tuple[dict[str, str], float]], samples: Iterable[Sample]) -> None:
    for name, labels, value in samples:
        key = (name, tuple(sorted(labels.items())))
        known = found.get(key)
        if known is None:
            found[key] = (labels, value)
        elif name.endswith("_created"):
            found[key] = (known[0], min(known[1], value))
        else:
            found[key] = (known[0], known[1] + value)


class _Merged(Collector):
    """A registry's families with other processes' snapshots added, for one exposition."""

    def __init__(self, registry: CollectorRegistry, others: Sequence[Snapshot]) -> None:
        self._registry = registry
        self._others = others

    def collect(self) -> Iterator[Metric]:
        families = list(self._registry.collect())
        own = {family.name: _samples(family) for family in families if family.name in WORKER_FAMILIES}
        totals = combine([own, *self._others])  # once for every family
        for family in families:
            if family.name not in WORKER_FAMILIES:
                yield family
                continue
            merged = Metric(family.name, family.documentation, family.type, family.unit)
            for name, labels, value in totals.get(family.name, []):
                merged.add_sample(name, labels, value)
            yield merged


# Prometheus's `le` label values for LATENCY_BUCKETS (Go's float formatting: repr for these values).
_BUCKET_LABELS = (*(repr(float(bound)) for bound in LATENCY_BUCKETS), "+Inf")


class _Histogram:
    """Counts per LATENCY_BUCKETS bucket (not cumulative; the last is +Inf) and their sum."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS, value)] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, float]]:
        running, buckets = 0, []
        for bound, count in zip(_BUCKET_LABELS, self.counts, strict=True):
            running += count
            buckets.append((bound, float(running)))
        return buckets


class _Traffic(Collector):
    """`requests_total`, `request_duration_seconds`, `upstream_request_duration_seconds` and
    `time_to_first_byte_seconds`, from plain per-label counts kept by the `observe_*` hooks."""

    REQUESTS = ("serving_sidecar_requests", "Requests answered, by endpoint, front and status code")
    DURATION = ("serving_sidecar_request_duration_seconds", "Time from request received to response finished")
    UPSTREAM = (
        "serving_sidecar_upstream_request_duration_seconds",
        "Time from sending a request upstream to the end of its response body",
    )
    FIRST_BYTE = (
        "serving_sidecar_time_to_first_byte_seconds",
        "Time from sending a request upstream to the first byte of its response body (first SSE event)",
    )

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str], dict[int | str, int]] = {}  # (endpoint, front) -> status -> count
        self.durations: dict[tuple[str, str], _Histogram] = {}
        self.exchanges: dict[str, tuple[_Histogram, _Histogram]] = {}

    def describe(self) -> Iterator[Metric]:
        yield CounterMetricFamily(*self.REQUESTS, labels=["endpoint", "front", "code"])
        yield HistogramMetricFamily(*self.DURATION, labels=["endpoint", "front"])
        yield HistogramMetricFamily(*self.UPSTREAM, labels=["endpoint"])
        yield HistogramMetricFamily(*self.FIRST_BYTE, labels=["endpoint"])

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(*self.REQUESTS, labels=["endpoint", "front", "code"])
        for (endpoint, front), counts in list(self.requests.items()):
            for status, count in list(counts.items()):
                requests.add_metric([endpoint, front, str(status)], count)
        duration = HistogramMetricFamily(*self.DURATION, labels=["endpoint", "front"])
        for pair, histogram in list(self.durations.items()):
            duration.add_metric(list(pair), histogram.cumulative(), histogram.total)
        upstream = HistogramMetricFamily(*self.UPSTREAM, labels=["endpoint"])
        first_byte = HistogramMetricFamily(*self.FIRST_BYTE, labels=["endpoint"])
        for endpoint, (whole, first) in list(self.exchanges.items()):
            upstream.add_metric([endpoint], whole.cumulative(), whole.total)
            first_byte.add_metric([endpoint], first.cumulative(), first.total)
        yield from (requests, duration, upstream, first_byte)


class _PoolCollector(Collector):
    """`upstream_connections{host, state="open"|"idle"}`: open counts all held connections, idle included."""

    NAME = "serving_sidecar_upstream_connections"
    HELP = "Upstream connections by host: open (in use, opening or idle) and idle (waiting in the pool)"

    def __init__(self, stats: Callable[[], Iterable[PoolStats]]) -> None:
        self._stats = stats

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(self.NAME, self.HELP, labels=["host", "state"])

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(self.NAME, self.HELP, labels=["host", "state"])
        for pool in self._stats():
            family.add_metric([pool.host, "open"], pool.open)
            family.add_metric([pool.host, "idle"], pool.idle)
        yield family
