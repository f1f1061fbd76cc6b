"""Admin listener: /healthz (alive), /startupz (started), /readyz (ready to serve), /metrics.

Kubernetes: startupProbe -> /startupz, livenessProbe -> /healthz, readinessProbe -> /readyz.
- /healthz answers 200 while the event loop runs: liveness must not restart the sidecar for a token
  outage or a model outage, which a restart cannot fix.
- /startupz answers 200 once the sidecar has been ready (listeners up, a workspace token in hand) and
  stays 200 afterwards, so a Kubernetes native sidecar holds the app container back until it can serve.
- /readyz does not depend on model health: only on a working credential, listeners up, not draining.
  It turns 503 as soon as a drain starts. It answers `Readiness.current()` (proxy/readiness.py), the
  same computation the gRPC health service follows, so the two never disagree.
- POST /quitquitquit starts the graceful stop (the `on_quit` hooks; the process then drains and exits 0),
  for Jobs whose sidecar is an ordinary container. Only from a loopback address (the pod's own
  containers): the admin listener is on the pod IP for the kubelet and Prometheus, and they must not be
  able to stop it. Other methods: 405.
Routing is `admin_handler`, a function of (method, path, peer) served by `downstream.plain.PlainServer`.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Sequence

from proxy.downstream.plain import Handler, PlainAnswer
from proxy.metrics import CONTENT_TYPE, Metrics, Snapshot
from proxy.readiness import Health

__all__ = ["Health", "admin_handler"]

Others = Callable[[], Sequence[Snapshot]]  # other processes' metrics (--workers), read at each scrape


def is_loopback_peer(remote: str | None) -> bool:
    """Whether a peer address is loopback (IPv4-mapped IPv6 included); unknown or malformed is not."""
    try:
        address = ipaddress.ip_address(remote or "")
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def _answer(code: int, status: str, reason: str, headers: tuple[tuple[str, str], ...] = ()) -> PlainAnswer:
    return PlainAnswer(code, json.dumps({"status": status, "reason": reason}).encode(), headers=headers)


def admin_handler(
    health: Callable[[], Health],
    metrics: Metrics,
    *,
    on_quit: Sequence[Callable[[], None]] = (),
    others: Others | None = None,
) -> Handler:
    """The admin routes. `on_quit` is read at each POST /quitquitquit, so hooks added later are called too.
    `others`: the workers' metrics (`--workers`), added to this process's in /metrics."""

    def status(ok: bool, reason: str) -> PlainAnswer:
        return _answer(200 if ok else 503, "ok" if ok else "unavailable", reason)

    def readyz() -> PlainAnswer:
        current = health()
        metrics.ready.set(1 if current.ready else 0)
        return status(current.ready, current.reason())

    def startupz() -> PlainAnswer:
        current = health()
        return status(current.started, "started" if current.started else "starting")

    def scrape() -> PlainAnswer:
        metrics.ready.set(1 if health().ready else 0)
        return PlainAnswer(200, metrics.exposition(others() if others is not None else ()), content_type=CONTENT_TYPE)

    def quitquitquit(method: str, peer: str | None) -> PlainAnswer:
        if method != "POST":
            return _answer(405, "refused", "POST /quitquitquit stops the sidecar", (("Allow", "POST"),))
        if not is_loopback_peer(peer):
            return _answer(403, "refused", "only the pod's own containers (loopback) may stop the sidecar")
        if not on_quit:
            return _answer(503, "unavailable", "this process does not stop on request")
        for hook in on_quit:
            hook()
        return _answer(200, "ok", "stopping")

    gets: dict[str, Callable[[], PlainAnswer]] = {
        "/healthz": lambda: status(True, "alive"),
        "/startupz": startupz,
        "/readyz": readyz,
        "/metrics": scrape,
    }

    def handle(method: str, path: str, peer: str | None) -> PlainAnswer:
        if path == "/quitquitquit":
            return quitquitquit(method, peer)
        route = gets.get(path)
        if route is None:
            return _answer(404, "refused", f"no such route; try {', '.join(gets)}")
        if method not in ("GET", "HEAD"):
            return _answer(405, "refused", f"{path} answers GET", (("Allow", "GET"),))
        return route()

    return handle
