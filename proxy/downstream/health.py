"""`grpc.health.v1.Health` for the gRPC front: one status for the server ("") and its services.

Rules:
1. The status starts NOT_SERVING; `set(serving)` changes it; `shut_down()` makes it NOT_SERVING for good.
   Both are synchronous, so a drain hook can call them, and neither waits on a watcher.
2. Check answers the status, or NOT_FOUND for a service this server does not have (as the spec says).
3. Watch sends the status at once and then every change (SERVICE_UNKNOWN for an unknown service). After
   shutdown it sends NOT_SERVING and ends, so an open Watch does not hold the server's stop for its whole
   grace period. Watchers never affect each other.
4. `refresh`, when given, runs before a Check answers and before a Watch sends its first status: it
   lets the owner recompute readiness and `set` it, so an answer is never staler than the question.

Why not grpcio-health-checking's aio servicer: its Watch streams never end, so each open one delays every
stop by the full grace; and when one watcher of a service leaves it drops the condition the others wait
on, so they miss later changes (the NOT_SERVING of a drain among them). Its messages and registration are
still the package's.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVICE_NAME: str = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class HealthService:
    def __init__(self, services: Iterable[str], *, refresh: Callable[[], object] | None = None) -> None:
        self._services = frozenset({"", *services})
        self._refresh = refresh
        self._serving = False
        self._shut_down = False
        self._changed = asyncio.Event()  # set, then replaced, on every change (rule 3)

    def __repr__(self) -> str:
        state = "shut down" if self._shut_down else "SERVING" if self._serving else "NOT_SERVING"
        return f"HealthService({state}, services={sorted(self._services)})"

    @property
    def serving(self) -> bool:
        return self._serving

    def add_to(self, server: Any) -> None:
        health_pb2_grpc.add_HealthServicer_to_server(self, server)

    def set(self, serving: bool) -> None:
        if not self._shut_down and serving != self._serving:
            self._serving = serving
            self._notify()

    def shut_down(self) -> None:
        if not self._shut_down:
            self._shut_down, self._serving = True, False
            self._notify()

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _status(self, service: str) -> Any:
        if service not in self._services:
            return SERVICE_UNKNOWN
        return SERVING if self._serving else NOT_SERVING

    def _refreshed(self) -> None:
        if self._refresh is not None:
            self._refresh()

    async def Check(self, request: Any, context: Any) -> Any:
        self._refreshed()
        if request.service not in self._services:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no service {request.service!r} here")
        return health_pb2.HealthCheckResponse(status=self._status(request.service))

    async def Watch(self, request: Any, context: Any) -> AsyncIterator[Any]:
        self._refreshed()
        sent = None
        while True:
            changed = self._changed  # taken with the status, so no change between the two is missed
            status = self._status(request.service)
            if status != sent:
                yield health_pb2.HealthCheckResponse(status=status)
                sent = status
                continue  # the status may have changed while that message was being sent
            if self._shut_down:
                return
            await changed.wait()
