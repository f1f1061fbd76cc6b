"""Prometheus instruments, created on an injected registry; the only prometheus_client user.

Label values come only from configuration and bounded sets: endpoint names that resolved (or were
configured), fronts (http, grpc), status codes, token kinds. A name that did not resolve is counted as
`UNRESOLVED`, never as the raw path.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from proxy import __version__
from proxy.credentials.cache import FetchOutcome

UNRESOLVED = "unresolved"
CONTENT_TYPE = CONTENT_TYPE_LATEST
# 1 ms .. 5 min: local hops are ~1 ms, models may run up to Databricks' 297 s limit.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "serving_sidecar_requests",
            "Requests answered, by endpoint, front and status code",
            ["endpoint", "front", "code"],
            registry=r,
        )
        self.request_duration = Histogram(
            "serving_sidecar_request_duration_seconds",
            "Time from request received to response finished",
            ["endpoint", "front"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
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
        self.retries = Counter(
            "serving_sidecar_retries",
            "Upstream sends repeated, by endpoint and reason",
            ["endpoint", "reason"],
            registry=r,
        )
        self.ready = Gauge("serving_sidecar_ready", "1 when the sidecar is ready to serve", registry=r)
        build = Gauge("serving_sidecar_build_info", "Build information", ["version"], registry=r)
        build.labels(version=__version__).set(1)

    def observe_token_fetch(self, outcome: FetchOutcome) -> None:
        self.token_fetches.labels(kind=outcome.kind, result="success" if outcome.ok else "failure").inc()
        if outcome.expires_at is not None:
            self.token_expiry.labels(kind=outcome.kind, endpoint=outcome.label).set(outcome.expires_at)

    def observe_retry(self, endpoint: str, reason: str) -> None:
        self.retries.labels(endpoint=endpoint, reason=reason).inc()

    def observe_resolution(self, result: str) -> None:
        self.resolutions.labels(result=result).inc()

    def observe_request(self, *, endpoint: str, front: str, code: int | str, seconds: float) -> None:
        self.requests.labels(endpoint=endpoint, front=front, code=str(code)).inc()
        self.request_duration.labels(endpoint=endpoint, front=front).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
