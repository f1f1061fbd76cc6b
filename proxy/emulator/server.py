"""The ``Emulator``: listeners, TLS, wiring of handlers, and the public Python API.

Layout on loopback:
- one control-plane listener (``workspace_url``): discovery, OAuth, workspace APIs, plain-endpoint
  invocations, ``/_emulator/`` admin routes;
- one data-plane listening socket per route-optimized endpoint incarnation, all served by one
  aiohttp runner. Each incarnation's URL is
  ``<scheme>://127.0.0.1:<its port>/<workspace_id>/serving-endpoints/<name>/invocations``, which
  stands in for the real per-endpoint host ``https://<endpoint-id>.serving...``.
  ``recreate_endpoint`` binds a new port; the old one keeps listening and answers 404.

Rules:
1. Sockets are bound synchronously (so ``recreate_endpoint`` is a plain call that returns the new
   id with its URL already connectable); serving on them starts on the event loop.
2. Runners cancel handlers whose client went away (``handler_cancellation=True``).
3. No handler ever answers a traceback: unexpected exceptions become a JSON 500, aiohttp's own
   404/405/413 become JSON in the shape of the path (OAuth shape under ``/oidc/``).
4. Methods other than ``start``/``stop`` must be called on the emulator's event loop thread,
   except ``recreate_endpoint``, which may also be called from another thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from aiohttp import web

from proxy.emulator.access import bearer_token
from proxy.emulator.admin import Admin
from proxy.emulator.connections import ConnectionTracker, abort, should_drop, wait_for_cancellation
from proxy.emulator.counters import Counters, Plane
from proxy.emulator.dataplane import UNKNOWN_PATH, Invocations
from proxy.emulator.endpoints import Incarnation, Registry
from proxy.emulator.faults import Faults
from proxy.emulator.oidc import Oidc
from proxy.emulator.responses import databricks_error, error_code_for, oauth_error
from proxy.emulator.settings import DEFAULT_WORKLOAD_SUBJECT, EmulatorSettings
from proxy.emulator.state import EmulatorState
from proxy.emulator.tls import Tls
from proxy.emulator.tokens import NOT_ISSUED, TokenAuthority, TokenRejection, WorkloadIssuer
from proxy.emulator.workspace import WorkspaceApi, authorization_details

log = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT = 1.0
ADMIN_PREFIX = "/_emulator/"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class Emulator:
    """An emulated Databricks workspace with a route-optimized data plane; see the package docs."""

    def __init__(self, settings: EmulatorSettings | None = None) -> None:
        self.settings = settings or EmulatorSettings()
        self.settings.validate()
        self._faults = copy.deepcopy(self.settings.faults)
        self._faults.cp_token_ttl = self.settings.cp_token_ttl
        self._faults.dp_token_ttl = self.settings.dp_token_ttl
        self._counters = Counters()
        self._tracker = ConnectionTracker(self._counters, self._faults)
        self._tls: Tls | None = None
        self._state: EmulatorState | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runners: dict[Plane, web.AppRunner] = {}
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._next_data_port = self.settings.data_port

    def __repr__(self) -> str:
        where = self._state.workspace_url if self._state else "stopped"
        return f"Emulator({where}, endpoints={len(self.settings.endpoints)}, faults={self._faults!r})"

    # --- lifecycle -------------------------------------------------------------------------------

    async def __aenter__(self) -> Emulator:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Bind every listener and start serving. Raises ``OSError`` if a port is taken."""
        if self._state is not None:
            raise RuntimeError("emulator already started")
        self._loop = asyncio.get_running_loop()
        settings = self.settings
        self._tls = Tls(settings.host) if settings.tls else None
        control_sock = _bind(settings.host, settings.control_port)
        try:
            self._state = self._make_state(control_sock.getsockname()[1])
            apps: tuple[tuple[Plane, web.Application], ...] = (
                ("control_plane", self._control_app()),
                ("data_plane", self._data_app()),
            )
            for plane, app in apps:
                runner = web.AppRunner(
                    app, handler_cancellation=True, shutdown_timeout=SHUTDOWN_TIMEOUT, access_log=None
                )
                await runner.setup()
                self._runners[plane] = runner
            await self._serve(control_sock, "control_plane")
            now_ms = int(time.time() * 1000)
            for spec in settings.endpoints:
                sock = self._bind_data_port() if spec.route_optimized else None
                self._state.registry.add(spec, port=None if sock is None else sock.getsockname()[1], now_ms=now_ms)
                if sock is not None:
                    await self._serve(sock, "data_plane")
        except BaseException:
            control_sock.close()
            await self.stop()
            raise
        self._spawn(self._sweep_connections())

    async def stop(self) -> None:
        """Stop listening, close connections (in-flight handlers get ``SHUTDOWN_TIMEOUT``), idempotent."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for server in self._servers:
            server.close()
        transports = [
            h.transport for r in self._runners.values() if r.server for h in r.server.connections if h.transport
        ]
        for runner in self._runners.values():
            await runner.cleanup()
        for transport in transports:
            # A TLS close waits for the peer's close_notify; do not leave it pending past stop().
            transport.abort()
        for server in self._servers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), SHUTDOWN_TIMEOUT)
        self._servers.clear()
        self._runners.clear()
        self._state = None

    def _make_state(self, control_port: int) -> EmulatorState:
        settings = self.settings
        scheme = "https" if self._tls else "http"
        host = settings.host if ":" not in settings.host else f"[{settings.host}]"
        workspace_url = f"{scheme}://{host}:{control_port}"
        return EmulatorState(
            settings=settings,
            faults=self._faults,
            counters=self._counters,
            registry=Registry(settings.workspace_id),
            authority=TokenAuthority(f"{workspace_url}/oidc"),
            workload=WorkloadIssuer(settings.workload_issuer),
            workspace_url=workspace_url,
            scheme=scheme,
        )

    def _control_app(self) -> web.Application:
        state = self._require_state()
        app = web.Application(middlewares=[self._connection_middleware, self._bearer_middleware, _error_middleware])
        Oidc(state).add_routes(app)
        WorkspaceApi(state).add_routes(app)
        Invocations(state, self._tracker).add_control_plane_routes(app)
        Admin(self).add_routes(app)
        return app

    def _data_app(self) -> web.Application:
        app = web.Application(middlewares=[self._connection_middleware, self._bearer_middleware, _error_middleware])
        Invocations(self._require_state(), self._tracker).add_data_plane_routes(app)
        return app

    def _bind_data_port(self) -> socket.socket:
        port = self._next_data_port
        if port:
            self._next_data_port += 1
        return _bind(self.settings.host, port)

    async def _serve(self, sock: socket.socket, plane: Plane) -> None:
        runner = self._runners[plane]
        assert runner.server is not None
        port = sock.getsockname()[1]
        factory = self._tracker.protocol_factory(runner.server, plane, port)
        context: ssl.SSLContext | None = self._tls.server_context if self._tls else None
        loop = asyncio.get_running_loop()
        server = await loop.create_server(factory, sock=sock, ssl=context)
        self._servers.append(server)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _sweep_connections(self) -> None:
        """Close idle connections while running (connections rule 3)."""
        while self._state is not None:
            await asyncio.sleep(self._tracker.sweep_interval())
            live = [h for r in self._runners.values() if r.server is not None for h in r.server.connections]
            self._tracker.sweep(live)

    @web.middleware
    async def _connection_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        connection = self._tracker.state(request)
        if connection is None or request.path.startswith(ADMIN_PREFIX):
            return await handler(request)
        if should_drop(connection, self._faults):
            self._counters.dropped_connections += 1
            abort(request)
            await wait_for_cancellation()
            return web.Response(status=503)
        self._tracker.request_started(connection)
        try:
            return await handler(request)
        finally:
            self._tracker.request_finished(connection)

    @web.middleware
    async def _bearer_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Counts every bearer token presented by whether this emulator issued it (signature check)."""
        token = bearer_token(request.headers.get("Authorization"))
        if token is not None and not request.path.startswith(ADMIN_PREFIX):
            state = self._require_state()
            verdict = state.authority.verify(token, now=state.clock())
            self._counters.bearer_token(own=not (isinstance(verdict, TokenRejection) and verdict.reason == NOT_ISSUED))
        return await handler(request)

    # --- public API ------------------------------------------------------------------------------

    def _require_state(self) -> EmulatorState:
        if self._state is None:
            raise RuntimeError("emulator is not running; call start() first")
        return self._state

    def _incarnation(self, name: str) -> Incarnation:
        incarnation = self._require_state().registry.get(name)
        if incarnation is None:
            raise KeyError(name)
        return incarnation

    @property
    def workspace_url(self) -> str:
        """``https://127.0.0.1:PORT`` (``http`` with ``tls=False``), no trailing slash."""
        return self._require_state().workspace_url

    @property
    def ca_pem(self) -> bytes | None:
        """The CA certificate (PEM) that signs every listener's certificate; None without TLS."""
        return None if self._tls is None else self._tls.ca_pem

    def write_ca(self, path: str | Path) -> Path:
        """Write the CA certificate to ``path``; raises ``RuntimeError`` without TLS."""
        if self._tls is None:
            raise RuntimeError("emulator runs plain HTTP: there is no CA")
        target = Path(path)
        self._tls.write_ca(target)
        return target

    def client_ssl_context(self) -> ssl.SSLContext | None:
        """An ``SSLContext`` trusting only the emulator's CA; None without TLS."""
        return None if self._tls is None else self._tls.client_context()

    @property
    def client_id(self) -> str:
        return self.settings.default_client_id

    @property
    def client_secret(self) -> str:
        return self.settings.clients[self.client_id]

    @property
    def faults(self) -> Faults:
        """The live knobs (the object ``/_emulator/faults`` edits)."""
        return self._faults

    @property
    def counters(self) -> Counters:
        """The live counters; ``counters.snapshot()`` is a JSON-able copy."""
        return self._counters

    @property
    def token_endpoint(self) -> str:
        return self._require_state().token_endpoint

    def endpoint_url(self, name: str) -> str:
        """Current invocation URL: its data-plane port if route-optimized, else the workspace path."""
        return self._require_state().endpoint_url(self._incarnation(name))

    def endpoint_id(self, name: str) -> str:
        """Current endpoint id (32 hex characters); changes on ``recreate_endpoint``."""
        return self._incarnation(name).endpoint_id

    def authorization_details(self, name: str) -> str:
        """The ``authorization_details`` string the metadata API reports for ``name``."""
        return json.dumps(authorization_details(self._incarnation(name)), separators=(",", ":"))

    def endpoints(self) -> list[dict[str, Any]]:
        """Name, id, URL and route-optimization of every current endpoint."""
        state = self._require_state()
        return [
            {
                "name": i.name,
                "id": i.endpoint_id,
                "endpoint_url": state.endpoint_url(i),
                "route_optimized": i.spec.route_optimized,
                "kind": i.spec.kind,
            }
            for i in state.registry.current()
        ]

    def recreate_endpoint(self, name: str) -> str:
        """Delete and re-create ``name``: new id and, if route-optimized, a new port. Returns the new id.

        Tokens scoped to the old id stop working on the new URL (403); the old URL answers 404.
        Raises ``KeyError`` for an unknown name.
        """
        state = self._require_state()
        old = self._incarnation(name)
        sock = self._bind_data_port() if old.spec.route_optimized else None
        port = None if sock is None else sock.getsockname()[1]
        incarnation = state.registry.add(old.spec, port=port, now_ms=int(time.time() * 1000))
        if sock is not None:
            self._start_serving(sock)
        return incarnation.endpoint_id

    def _start_serving(self, sock: socket.socket) -> None:
        loop = self._loop
        assert loop is not None
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._spawn(self._serve(sock, "data_plane"))
        else:
            loop.call_soon_threadsafe(self._spawn, self._serve(sock, "data_plane"))

    def set_client_secret(self, client_id: str, secret: str) -> None:
        """From now on ``client_id`` authenticates with ``secret`` (an admin fixing or rotating a principal)."""
        if not client_id or not secret:
            raise ValueError("client_id and secret must be non-empty")
        self.settings.clients[client_id] = secret

    def revoke_all_tokens(self) -> None:
        """Every token minted so far stops working (401 everywhere, ``invalid_grant`` as assertion)."""
        self._require_state().authority.revoke_all()

    def fail_next(
        self, count: int, status: int, *, retry_after: int | None = None, endpoint: str | None = None
    ) -> None:
        """The next ``count`` invocations (of ``endpoint`` or any) answer ``status`` (429/503/...)."""
        self._faults.fail_next(count, status, retry_after=retry_after, endpoint=endpoint)

    def issue_workload_token(
        self,
        *,
        subject: str | None = None,
        audience: str | None = None,
        ttl: float = 3600.0,
        issuer: str | None = None,
    ) -> str:
        """An RS256 JWT from the fake Kubernetes issuer.

        Defaults: subject ``system:serviceaccount:default:serving-sidecar``, audience the workspace
        token endpoint (matches the default federation policy). ``issuer`` overrides ``iss``.
        """
        state = self._require_state()
        return state.workload.issue(
            subject=subject or DEFAULT_WORKLOAD_SUBJECT,
            audience=audience or state.token_endpoint,
            ttl=ttl,
            now=state.clock(),
            issuer=issuer,
        )

    def workload_jwks(self) -> dict[str, Any]:
        """The fake Kubernetes issuer's public keys."""
        return self._require_state().workload.jwks()


@web.middleware
async def _error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Rule 3."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _http_error(request, exc)
    except (asyncio.CancelledError, ConnectionError):
        raise
    except Exception:
        log.exception("emulator handler failed for %s %s", request.method, request.path)
        return databricks_error(500, "INTERNAL_ERROR", "Internal error in the emulator")


def _http_error(request: web.Request, exc: web.HTTPException) -> web.Response:
    if request.path.startswith("/oidc/"):
        return oauth_error(exc.status, "invalid_request", exc.reason)
    if exc.status == 404:
        message = (
            UNKNOWN_PATH
            if "serving-endpoints" in request.path
            else f"No API found for '{request.method} {request.path}'"
        )
        return databricks_error(404, "ENDPOINT_NOT_FOUND", message)
    if exc.status == 405:
        return databricks_error(405, "BAD_REQUEST", f"Method {request.method} is not allowed for {request.path}")
    return databricks_error(exc.status, error_code_for(exc.status), exc.reason)
