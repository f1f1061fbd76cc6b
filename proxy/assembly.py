"""The data path assembled from Settings: upstream pools, the forwarder, the HTTP front with its local
routes (`surface`), and the hook that turns each answered request into metrics and an access-log line.

One assembly per process: the sidecar itself (`app.Sidecar`), or each worker of `--workers N`
(`workers.worker`), which hands it the parent's resolutions and tokens through the same small interfaces
(`endpoints.Resolutions`, `credentials.cache.TokenSources`). No gRPC here: workers never load it.
"""

from __future__ import annotations

import dataclasses
import ssl
from typing import Protocol

from proxy import logs
from proxy.admission import Admission
from proxy.config import Settings
from proxy.credentials.cache import TokenSources
from proxy.downstream.http import HttpFront, Limits
from proxy.endpoints import HttpFetch, Resolutions, TokenSource
from proxy.forwarding import Forwarder, RequestRecord
from proxy.metrics import UNRESOLVED, Metrics
from proxy.retries import RetryBudget, RetryPolicy
from proxy.surface import Surface
from proxy.surface.workspace import WorkspaceReads
from proxy.upstream.pool import Timeouts, Upstream

MAX_LABELS = 1024  # endpoint names remembered as metric labels (the resolver caches as many)


def timeouts(settings: Settings) -> Timeouts:
    return Timeouts(
        connect=settings.connect_timeout,
        first_byte=settings.first_byte_timeout,
        stream_idle=settings.stream_idle_timeout,
        idle_connection=settings.idle_connection_timeout,
    )


def upstream(settings: Settings, metrics: Metrics, ssl_context: ssl.SSLContext) -> Upstream:
    """The data-plane pools, reporting connects and (at each scrape) their connections to `metrics`."""
    pools = Upstream(
        ssl_context=ssl_context,
        pool_size=settings.pool_size,
        timeouts=timeouts(settings),
        on_connect=metrics.observe_connect,
        egress_proxy=settings.egress_proxy,
    )
    metrics.watch_pools(pools.stats)
    return pools


class RequestObserver:
    """The fronts' `on_request` hook: one answered request, to metrics and (when on) the access log."""

    def __init__(self, settings: Settings, metrics: Metrics, resolutions: Resolutions) -> None:
        self._configured = frozenset(settings.endpoints)
        self._access_log = settings.access_log
        self._metrics = metrics
        self._resolutions = resolutions
        self._labels: set[str] = set()

    def __repr__(self) -> str:
        return f"RequestObserver(configured={sorted(self._configured)}, access_log={self._access_log})"

    def endpoint_label(self, name: str) -> str:
        """Metric label for an endpoint name: configured or resolved names only (remembered once known)."""
        if name in self._labels:
            return name
        if name in self._configured or self._resolutions.cached(name) is not None:
            if len(self._labels) >= MAX_LABELS:
                self._labels.clear()
            self._labels.add(name)
            return name
        return UNRESOLVED

    def __call__(self, record: RequestRecord) -> None:
        label = self.endpoint_label(record.endpoint)
        self._metrics.observe_request(record, label)
        if self._access_log:
            logs.log_access(
                logs.AccessRecord(
                    record.front,
                    record.method,
                    logs.access_path(record.path),
                    label,
                    record.status,
                    record.seconds,
                    record.bytes_sent,
                    record.request_id,
                )
            )


def forwarder(
    settings: Settings,
    resolutions: Resolutions,
    tokens: TokenSources,
    pools: Upstream,
    metrics: Metrics,
    observer: RequestObserver,
) -> Forwarder:
    return Forwarder(
        resolutions,
        tokens,
        pools,
        admission=Admission(max_total=settings.max_in_flight, max_per_endpoint=settings.max_in_flight_per_endpoint),
        policy=RetryPolicy(
            attempts=settings.retry_attempts,
            budget=settings.retry_budget,
            idempotent=frozenset(settings.idempotent_endpoints),
        ),
        budget=RetryBudget(ratio=settings.retry_ratio, min_per_second=settings.min_retries_per_second),
        on_retry=lambda endpoint, reason: metrics.observe_retry(observer.endpoint_label(endpoint), reason),
        on_exchange=metrics.observe_exchange,
    )


def limits(settings: Settings) -> Limits:
    """The HTTP front's limits: the settings of the same names."""
    return Limits(**{field.name: getattr(settings, field.name) for field in dataclasses.fields(Limits)})


class KnownNames(Resolutions, Protocol):
    def known(self) -> list[str]:
        """The names resolved now."""


def surface(settings: Settings, fetch: HttpFetch, workspace_token: TokenSource, resolutions: KnownNames) -> Surface:
    """The local routes: workspace reads with the workspace token, the endpoint list from what is known."""
    return Surface(
        WorkspaceReads(fetch, workspace_token, settings.host),
        lambda: {*settings.endpoints, *resolutions.known()},
    )


def http_front(settings: Settings, forwarder: Forwarder, observer: RequestObserver, local: Surface) -> HttpFront:
    return HttpFront(
        forwarder,
        on_request=observer,
        limits=limits(settings),
        surface=local,
        socket_mode=settings.socket_mode,
        socket_group=settings.socket_group,
    )
