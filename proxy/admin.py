"""Admin listener: /healthz (alive), /startupz (started), /readyz (ready to serve), /metrics.

Kubernetes: startupProbe -> /startupz, livenessProbe -> /healthz, readinessProbe -> /readyz.
- /healthz answers 200 while the event loop runs: liveness must not restart the sidecar for a token
  outage or a model outage, which a restart cannot fix.
- /startupz answers 200 once the sidecar has been ready (listeners up, a workspace token in hand) and
  stays 200 afterwards, so a Kubernetes native sidecar holds the app container back until it can serve.
- /readyz does not depend on model health: only on a working credential, listeners up, not draining.
  It turns 503 as soon as a drain starts. It answers `Readiness.current()` (proxy/readiness.py), the
  same computation the gRPC health service follows, so the two never disagree.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from aiohttp import web

from proxy.metrics import CONTENT_TYPE, Metrics
from proxy.readiness import Health

__all__ = ["Health", "build_admin_app"]


def build_admin_app(health: Callable[[], Health], metrics: Metrics) -> web.Application:
    def status(ok: bool, reason: str) -> web.Response:
        return web.Response(
            status=200 if ok else 503,
            text=json.dumps({"status": "ok" if ok else "unavailable", "reason": reason}),
            content_type="application/json",
        )

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
        response = web.Response(body=metrics.exposition())
        response.headers["Content-Type"] = CONTENT_TYPE
        return response

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/startupz", startupz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)
    return app
