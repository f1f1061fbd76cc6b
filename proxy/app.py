"""Composition root: builds every part from Settings and owns start / ready / drain / stop.

Drain (SIGTERM/SIGINT), in order:
1. `drain()` marks the sidecar draining: /readyz answers 503 at once and every `on_drain` hook runs
   (where a front with its own health reporting, like gRPC's, can switch to NOT_SERVING at once).
2. For `drain_delay` seconds new requests are still accepted, so load balancers notice first.
3. The front listeners stop accepting; keep-alive connections close after their current request, and
   requests in flight (streams included) get `drain_timeout` seconds to finish, then are cancelled.
4. The admin listener closes last (probes and scrapes work until then), then tokens and pools.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry

from proxy.admin import Health, build_admin_app
from proxy.admission import Admission
from proxy.config import ListenAddress, Settings, UnixAddress
from proxy.credentials.cache import Fetch
from proxy.credentials.oauth import OAuthClient, SecretReader
from proxy.credentials.sources import (
    Credentials,
    secret_from_file,
    secret_from_value,
    watch_file,
    workload_identity_fetch,
)
from proxy.downstream import unix
from proxy.downstream.grpc import GrpcFront
from proxy.downstream.http import HttpFront
from proxy.endpoints import Resolver, metadata_fetcher
from proxy.errors import SidecarError
from proxy.forwarding import Forwarder
from proxy.metrics import UNRESOLVED, Metrics
from proxy.retries import RetryPolicy
from proxy.surface import Surface
from proxy.surface.workspace import WorkspaceReads
from proxy.upstream import Timeouts, Upstream, build_ssl_context

log = logging.getLogger("serving_sidecar")


ADMIN = "admin"
ADMIN_GRACE = 1.0  # seconds for a probe or scrape in progress when the admin listener closes


class Listener(Protocol):
    """A bound listener the sidecar can drain. The gRPC front plugs in with the same two members."""

    @property
    def port(self) -> int: ...

    async def stop(self, grace: float) -> None:
        """Stop accepting at once; give work in flight up to `grace` seconds, then cancel it."""


@dataclass
class _AiohttpListener:
    runner: web.AppRunner
    address: ListenAddress
    port: int = 0  # 0 for a Unix socket
    socket_file: unix.SocketFile | None = None
    stopped: bool = field(default=False, repr=False)

    async def stop(self, grace: float) -> None:
        if self.stopped:
            return
        self.stopped = True
        for site in list(self.runner.sites):
            await site.stop()  # no new connections
        server = self.runner.server
        if server is not None:
            server.pre_shutdown()  # keep-alive connections close once their current request is answered
            await server.shutdown(grace)  # handlers still running after `grace` are cancelled
        await self.runner.cleanup()
        if self.socket_file is not None:
            self.socket_file.remove()


class Sidecar:
    def __init__(self, settings: Settings, *, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.metrics = Metrics(registry)
        self.upstream = Upstream(
            ssl_context=build_ssl_context(settings.ca_bundle),
            pool_size=settings.pool_size,
            timeouts=Timeouts(
                connect=settings.connect_timeout,
                first_byte=settings.first_byte_timeout,
                stream_idle=settings.stream_idle_timeout,
                idle_connection=settings.idle_connection_timeout,
            ),
            on_connect=self.metrics.observe_connect,
        )
        self.metrics.watch_pools(self.upstream.stats)
        self.oauth = OAuthClient(
            self.upstream.fetch,
            token_url=settings.token_url,
            client_id=settings.client_id,
            read_secret=_secret_reader(settings),
        )
        self.credentials = Credentials(self.oauth, self._workspace_fetch(), observer=self.metrics.observe_token_fetch)
        self.resolver = Resolver(
            metadata_fetcher(self.upstream.fetch, self.credentials.workspace, settings.host),
            workspace_url=settings.host,
            ttl=settings.metadata_ttl,
            on_resolve=self.metrics.observe_resolution,
            # a recreated or deleted endpoint's data-plane token stops refreshing
            on_change=lambda old: self.credentials.forget(old.url, old.authorization_details),
        )
        self.forwarder = Forwarder(
            self.resolver,
            self.credentials,
            self.upstream,
            admission=Admission(max_total=settings.max_in_flight, max_per_endpoint=settings.max_in_flight_per_endpoint),
            policy=RetryPolicy(
                attempts=settings.retry_attempts,
                budget=settings.retry_budget,
                idempotent=frozenset(settings.idempotent_endpoints),
            ),
            on_retry=lambda endpoint, reason: self.metrics.observe_retry(self.endpoint_label(endpoint), reason),
            on_exchange=self.metrics.observe_exchange,
        )
        self.surface = Surface(
            WorkspaceReads(self.upstream.fetch, self.credentials.workspace, settings.host),
            lambda: {*settings.endpoints, *self.resolver.known()},
        )
        self.http_front = HttpFront(
            self.forwarder, self.metrics, self.endpoint_label, self.surface, access_log=settings.access_log
        )
        self.grpc_front = GrpcFront(self.forwarder, self.metrics, self.endpoint_label, lambda: self.health().ready)
        self._listeners: dict[str, Listener] = {}
        # run once, synchronously, when draining starts: gRPC health turns NOT_SERVING at the same moment
        self.on_drain: list[Callable[[], None]] = [self.grpc_front.begin_draining]
        self._started = False
        self._was_ready = False
        self._draining = False
        self._tasks: list[asyncio.Task[None]] = []

    def __repr__(self) -> str:
        return f"Sidecar(host={self.settings.host!r}, listeners={list(self._listeners)}, {self.health()})"

    def _workspace_fetch(self) -> Fetch:
        if self.settings.auth == "workload-identity" and self.settings.token_file is not None:
            return workload_identity_fetch(self.oauth, self.settings.token_file, audience=self.settings.token_audience)
        return self.oauth.client_credentials

    def endpoint_label(self, name: str) -> str:
        """Metric label for an endpoint name: configured or resolved names only."""
        if name in self.settings.endpoints or self.resolver.cached(name) is not None:
            return name
        return UNRESOLVED

    def health(self) -> Health:
        """Liveness, startup (ready at least once since start) and readiness, computed now."""
        workspace = self.credentials.workspace
        error = workspace.last_error
        listening = bool(self._listeners) and not self._draining
        credential_ok = workspace.is_usable()
        # Startup is latched: once ready, a later token outage makes the sidecar unready, never "not started".
        if not self._was_ready and self._started and listening and credential_ok:
            self._was_ready = True
            log.info("ready: listeners up and a workspace token in hand")
        return Health(
            started=self._was_ready,
            listening=listening,
            credential_ok=credential_ok,
            draining=self._draining,
            credential_error=None if error is None else f"{error.error}: {error.description}".rstrip(": "),
        )

    def port(self, name: str) -> int:
        """The bound port of listener `name` ("http", "grpc", "admin"): useful with port 0."""
        return self._listeners[name].port

    async def start(self) -> None:
        """Bind the listeners, then fetch the first token and warm the configured endpoints in the background."""
        await self._listen(ADMIN, build_admin_app(self.health, self.metrics), self.settings.admin_listen)
        await self._listen("http", self.http_front.app(), self.settings.http_listen)
        address = self.settings.grpc_listen
        await self.grpc_front.start(
            address, socket_mode=self.settings.socket_mode, socket_group=self.settings.socket_group
        )
        self._listeners["grpc"] = self.grpc_front
        log.info(
            "grpc listener on %s",
            address if isinstance(address, UnixAddress) else f"{address.host}:{self.grpc_front.port}",
        )
        self.credentials.start()
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._warm_configured()))
        if self.settings.client_secret_file is not None:
            watcher = watch_file(self.settings.client_secret_file, self.credentials.workspace.retry_now)
            self._tasks.append(loop.create_task(watcher))
        self._started = True

    async def _listen(self, name: str, app: web.Application, address: ListenAddress) -> None:
        # handler_cancellation: a caller that hangs up cancels its handler, which closes the upstream request.
        runner = web.AppRunner(
            app, access_log=None, handle_signals=False, auto_decompress=False, handler_cancellation=True
        )
        await runner.setup()
        listener = _AiohttpListener(runner, address)
        self._listeners[name] = listener  # stopped with the others, even if the site below fails to start
        if isinstance(address, UnixAddress):
            # A socket made (and given its mode and group) before it listens: no caller gets in earlier.
            mode, group = self.settings.socket_mode, self.settings.socket_group
            sock, listener.socket_file = unix.listening_socket(address.path, mode=mode, group=group)
            await web.SockSite(runner, sock).start()
            log.info("%s listener on %s", name, address)
            return
        await web.TCPSite(runner, address.host, address.port, backlog=1024, reuse_address=True).start()
        listener.port = int(runner.addresses[0][1]) if runner.addresses else address.port
        log.info("%s listener on %s:%s", name, address.host, listener.port)

    async def _warm_configured(self) -> None:
        for name in self.settings.endpoints:
            try:
                await self.forwarder.warm(name, self.settings.warm_connections)
            except SidecarError as error:
                log.warning("could not warm endpoint %s: %s", name, error.message)

    async def wait_ready(self, seconds: float) -> bool:
        """Poll readiness for up to `seconds`; True once ready."""
        for _ in range(max(1, int(seconds / 0.05))):
            if self.health().ready:
                return True
            await asyncio.sleep(0.05)
        return self.health().ready

    def begin_draining(self) -> None:
        """Readiness 503 from now on; runs the `on_drain` hooks once."""
        if self._draining:
            return
        self._draining = True
        self.metrics.ready.set(0)
        for hook in self.on_drain:
            try:
                hook()
            except Exception:
                log.exception("a drain hook failed")

    async def drain(self) -> None:
        """The graceful stop (SIGTERM): see the module docstring. Takes at most drain_delay + drain_timeout (+1 s)."""
        delay, timeout = self.settings.drain_delay, self.settings.drain_timeout
        self.begin_draining()
        log.info("draining: readiness is now 503; new requests are accepted for %.1f s more", delay)
        await asyncio.sleep(delay)
        log.info("draining: closing listeners; requests in flight get up to %.1f s to finish", timeout)
        await self.stop(grace=timeout)
        log.info("stopped")

    async def stop(self, *, grace: float | None = None) -> None:
        """Close everything: front listeners first (in flight get `grace`, default drain_timeout), admin last."""
        self.begin_draining()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        grace = self.settings.drain_timeout if grace is None else grace
        fronts = [listener for name, listener in self._listeners.items() if name != ADMIN]
        await asyncio.gather(*(listener.stop(grace) for listener in fronts))
        admin = self._listeners.get(ADMIN)
        if admin is not None:
            await admin.stop(ADMIN_GRACE)
        self._listeners.clear()
        await self.credentials.close()
        await self.upstream.close()


def _secret_reader(settings: Settings) -> SecretReader | None:
    if settings.client_secret_file is not None:
        return secret_from_file(settings.client_secret_file)
    if settings.client_secret:
        return secret_from_value(settings.client_secret)
    return None
