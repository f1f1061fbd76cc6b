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
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web

from proxy.metrics import CONTENT_TYPE, Metrics, Snapshot
from proxy.readiness import Health

__all__ = ["Health", "build_admin_app"]

Gather = Callable[[], Awaitable[Sequence[Snapshot]]]  # other processes' metrics (--workers), read at each scrape


def is_loopback_peer(remote: str | None) -> bool:
    """Whether a peer address is loopback (IPv4-mapped IPv6 included); unknown or malformed is not."""
    try:
        address = ipaddress.ip_address(remote or "")
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def _answer(code: int, status: str, reason: str) -> web.Response:
    return web.Response(
        status=code, text=json.dumps({"status": status, "reason": reason}), content_type="application/json"
    )


def build_admin_app(
    health: Callable[[], Health],
    metrics: Metrics,
    *,
    on_quit: Sequence[Callable[[], None]] = (),
    gather: Gather | None = None,
) -> web.Application:
    """The admin routes. `on_quit` is read at each POST /quitquitquit, so hooks added later are called too.
    `gather`: the workers' metrics, added to this process's in /metrics."""

    def status(ok: bool, reason: str) -> web.Response:
        return _answer(200 if ok else 503, "ok" if ok else "unavailable", reason)

    async def healthz(_: web.Request) -> web.Response:
        return status(True, "alive")

    async def startupz(_: web.Request) -> web.Response:
        current = health()
        return status(current.started, "started" if current.started else "starting")

    async def readyz(_: web.Request) -> web.Response:
        current = health()
        metrics.ready.set(1 if current.ready else 0)
        return status(current.ready, current.reason())

    async def metrics_handler(_: web.Request) -> web.Response:
        metrics.ready.set(1 if health().ready else 0)
        others = await gather() if gather is not None else ()
        response = web.Response(body=metrics.exposition(others))
        response.headers["Content-Type"] = CONTENT_TYPE
        return response

    async def quitquitquit(request: web.Request) -> web.Response:
        if request.method != "POST":
            response = _answer(405, "refused", "POST /quitquitquit stops the sidecar")
            response.headers["Allow"] = "POST"
            return response
        if not is_loopback_peer(request.remote):
            return _answer(403, "refused", "only the pod's own containers (loopback) may stop the sidecar")
        if not on_quit:
            return _answer(503, "unavailable", "this process does not stop on request")
        for hook in on_quit:
            hook()
        return _answer(200, "ok", "stopping")

    app = web.Application()
    app.router.add_route("*", "/quitquitquit", quitquitquit)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/startupz", startupz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)
    return app
