"""Composition root: builds every part from Settings and owns start / ready / drain / stop.

Drain (SIGTERM/SIGINT), in order:
1. `drain()` marks the sidecar draining: /readyz answers 503 at once and every `on_drain` hook runs
   (where a front with its own health reporting, like gRPC's, can switch to NOT_SERVING at once).
2. For `drain_delay` seconds new requests are still accepted, so load balancers notice first.
3. The front listeners stop accepting; keep-alive connections close after their current request, and
   requests in flight (streams included) get `drain_timeout` seconds to finish, then are cancelled.
4. The admin listener closes last (probes and scrapes work until then), then tokens and pools.

With `--workers N` (N > 1) the HTTP listener is `workers.supervisor.Workers`: N worker processes serve
the HTTP front while this process keeps tokens, resolutions, the gRPC front and the admin listener (see
`proxy.workers`); step 3 stops them all, and readiness also needs every worker serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import math
import os
import resource
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol

from proxy import assembly
from proxy.admin import admin_handler
from proxy.config import Address, ListenAddress, Settings, UnixAddress
from proxy.credentials.cache import Fetch, Token
from proxy.credentials.oauth import OAuthClient, SecretReader
from proxy.credentials.sources import (
    Credentials,
    TokenKey,
    secret_from_file,
    secret_from_value,
    watch_file,
    workload_identity_fetch,
)
from proxy.downstream.grpc import GrpcFront
from proxy.downstream.http import HttpFront
from proxy.downstream.plain import PlainServer
from proxy.endpoints import Resolution, Resolver, metadata_fetcher
from proxy.errors import ConfigError
from proxy.metrics import Metrics
from proxy.readiness import Health, Readiness
from proxy.upstream import build_ssl_context
from proxy.upstream.control import ControlPlane

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from proxy.workers.supervisor import Workers

log = logging.getLogger("serving_sidecar")


ADMIN = "admin"
DESCRIPTORS_RECOVERY = 5.0  # seconds unready (and one log line) after running out of file descriptors
DESCRIPTORS_RESERVE = 8  # descriptors below the open-files limit that already count as running out
ADMIN_GRACE = 1.0  # seconds for a probe or scrape in progress when the admin listener closes


class Listener(Protocol):
    """A bound listener the sidecar can drain. The gRPC front plugs in with the same two members."""

    @property
    def port(self) -> int: ...

    async def stop(self, grace: float) -> None:
        """Stop accepting at once; give work in flight up to `grace` seconds, then cancel it."""


class Sidecar:
    def __init__(self, settings: Settings, *, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.metrics = Metrics(registry)
        ssl_context = build_ssl_context(settings.ca_bundle)
        self.upstream = assembly.upstream(settings, self.metrics, ssl_context)
        self.control = ControlPlane(self.upstream)
        self.oauth = OAuthClient(
            self.control.fetch,
            token_url=settings.token_url,
            client_id=settings.client_id,
            read_secret=_secret_reader(settings),
        )
        # Readiness is recomputed on every event that can change it (rules in proxy/readiness.py).
        self.readiness = Readiness(self._compute_health, usable_until=lambda: self.credentials.workspace.usable_until)
        self.readiness.subscribe(lambda health: self.metrics.ready.set(1 if health.ready else 0))
        self.credentials = Credentials(
            self.oauth,
            self._workspace_fetch(),
            workspace_url=settings.host,
            observer=self.metrics.observe_token_fetch,
            on_workspace_change=self.readiness.current,
            on_token=self._token_obtained,
        )
        self.resolver = Resolver(
            metadata_fetcher(self.control.fetch, self.credentials.workspace, settings.host),
            workspace_url=settings.host,
            ttl=settings.metadata_ttl,
            on_resolve=self.metrics.observe_resolution,
            on_change=self._resolution_changed,
            configured=frozenset(settings.endpoints),
            only_configured=settings.only_configured_endpoints,
        )
        self.observe_request = assembly.RequestObserver(settings, self.metrics, self.resolver)
        self.forwarder = assembly.forwarder(
            settings, self.resolver, self.credentials, self.upstream, self.metrics, self.observe_request
        )
        self.surface = assembly.surface(settings, self.control.fetch, self.credentials.workspace, self.resolver)
        self.http_front = assembly.http_front(settings, self.forwarder, self.observe_request, self.surface)
        self.grpc_front = GrpcFront(self.forwarder, self.observe_request, self.readiness)
        # --workers N > 1: N processes serve the HTTP front; this one keeps tokens, resolutions, gRPC and admin.
        self.workers: Workers | None = None
        if settings.workers > 1:
            from proxy.workers.supervisor import Workers  # loaded only with workers (memory)

            self.workers = Workers(
                settings,
                self.resolver,
                self.credentials,
                on_change=self.readiness.current,
                on_no_descriptors=self.out_of_descriptors,
            )
        self.metrics.watch_in_flight("http", lambda: self.http_front.in_flight)
        self.metrics.watch_in_flight("grpc", lambda: self.grpc_front.in_flight)
        self._listeners: dict[str, Listener] = {}
        self._descriptors_out_at = -math.inf  # time.monotonic() of the last accept() without a descriptor
        # run once, synchronously, when draining starts: gRPC health turns NOT_SERVING at the same moment
        self.on_drain: list[Callable[[], None]] = [self.grpc_front.begin_draining]
        # run on POST /quitquitquit (admin listener): whoever runs the sidecar starts its graceful stop
        self.on_quit: list[Callable[[], None]] = []
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

    def _token_obtained(self, key: TokenKey, token: Token) -> None:
        if self.workers is not None:
            self.workers.authority.token_obtained(key, token)  # to every worker

    async def _resolution_changed(self, old: Resolution) -> None:
        # a recreated or deleted endpoint's data-plane token stops refreshing
        await self.credentials.forget(old.url, old.authorization_details)
        if self.workers is not None:
            self.workers.authority.resolution_changed(old)

    def health(self) -> Health:
        """Liveness, startup (ready at least once since start) and readiness, computed now (subscribers follow)."""
        return self.readiness.current()

    def _compute_health(self) -> Health:
        workspace = self.credentials.workspace
        error = workspace.last_error
        listening = bool(self._listeners) and not self._draining
        credential_ok = workspace.is_usable()
        workers_problem = None if self.workers is None else self.workers.problem()
        # Startup is latched: once ready, a later token outage makes the sidecar unready, never "not started".
        if not self._was_ready and self._started and listening and credential_ok and workers_problem is None:
            self._was_ready = True
            log.info("ready: listeners up and a workspace token in hand")
        return Health(
            started=self._was_ready,
            listening=listening,
            credential_ok=credential_ok,
            draining=self._draining,
            credential_error=None if error is None else f"{error.error}: {error.description}".rstrip(": "),
            descriptors_ok=time.monotonic() - self._descriptors_out_at > DESCRIPTORS_RECOVERY,
            workers_problem=workers_problem,
        )

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """Running out of file descriptors is a condition, not a bug: readiness says so, and one log line per
        DESCRIPTORS_RECOVERY seconds instead of a traceback per refused accept (asyncio's loop reports it
        here; uvloop drops such connections silently, which `_watch_descriptors` notices). Else: the default."""
        exc = context.get("exception")
        if not (isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE)):
            loop.default_exception_handler(context)
            return
        self.out_of_descriptors(exc.strerror or "too many open files")

    def out_of_descriptors(self, why: str) -> None:
        """No file descriptor left (accept() here or in the `--workers` acceptor, or the limit nearly met)."""
        now = time.monotonic()
        if now - self._descriptors_out_at > DESCRIPTORS_RECOVERY:
            log.error("out of file descriptors (%s): new connections are refused; readiness is 503", why)
        self._descriptors_out_at = now
        self.readiness.current()

    async def _watch_descriptors(self) -> None:
        """Once a second: open descriptors within DESCRIPTORS_RESERVE of the limit count as running out."""
        while True:
            await asyncio.sleep(1.0)
            used, limit = descriptors()
            if used is not None and used >= limit - DESCRIPTORS_RESERVE:
                self.out_of_descriptors(f"{used} open, limit {limit}")

    def port(self, name: str) -> int:
        """The bound port of listener `name` ("http", "grpc", "admin"): useful with port 0."""
        return self._listeners[name].port

    async def start(self) -> None:
        """Bind the listeners, then fetch the first token and warm the configured endpoints in the background."""
        asyncio.get_running_loop().set_exception_handler(self._loop_exception)
        others = None if self.workers is None else self.workers.snapshots
        admin = PlainServer(admin_handler(self.health, self.metrics, on_quit=self.on_quit, others=others))
        await self._listen(ADMIN, admin, admin.start(self.settings.admin_listen), self.settings.admin_listen)
        http = self.settings.http_listen
        front: HttpFront | Workers = self.http_front if self.workers is None else self.workers
        await self._listen("http", front, front.start(http), http)
        await self.grpc_front.start(
            self.settings.grpc_listen, socket_mode=self.settings.socket_mode, socket_group=self.settings.socket_group
        )
        self._listeners["grpc"] = self.grpc_front
        # One line once all are bound: a port in use is then the only line a failed start writes.
        log.info("listening: %s", ", ".join(f"{name} on {self._bound(name)}" for name in ("http", "grpc", ADMIN)))
        _log_egress(self.settings)
        self.credentials.start()
        loop = asyncio.get_running_loop()
        self._tasks.append(
            loop.create_task(self.forwarder.warm_all(self.settings.endpoints, self.settings.warm_connections))
        )
        self._tasks.append(loop.create_task(self._watch_descriptors()))
        if self.settings.client_secret_file is not None:
            watcher = watch_file(self.settings.client_secret_file, self.credentials.workspace.retry_now)
            self._tasks.append(loop.create_task(watcher))
        self._started = True
        self.readiness.current()

    def reload_credentials(self) -> None:
        """SIGHUP: fetch a workspace token now, re-reading the secret (or token) file, and end every token
        failure backoff. A failed fetch keeps the current token; nothing stops."""
        source = self.settings.client_secret_file or self.settings.token_file
        what = f"re-reading {source}" if source else "the client secret comes from the environment or a profile"
        failing = self.credentials.reload()
        retried = f"; {failing} failed token(s) retried at once" if failing else ""
        log.info("SIGHUP: %s; fetching a new workspace token now%s", what, retried)

    async def _listen(
        self, name: str, listener: Listener, starting: Coroutine[Any, Any, int], address: ListenAddress
    ) -> None:
        """Bind `listener` (`starting` is its start); an address in use is a configuration error naming the option."""
        try:
            await starting
        except OSError as exc:
            if not exc.errno:  # our own message (a Unix socket file in the way) already names the address
                raise ConfigError(f"{name}-listen: {exc}") from None
            raise ConfigError(f"{name}-listen: cannot listen on {address}: {os.strerror(exc.errno)}") from None
        self._listeners[name] = listener

    def _bound(self, name: str) -> ListenAddress:
        configured: ListenAddress = getattr(self.settings, f"{name}_listen")
        return configured if isinstance(configured, UnixAddress) else Address(configured.host, self.port(name))

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
        self.readiness.current()
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
        self.readiness.current()
        self.readiness.close()
        await self.credentials.close()
        self.upstream.close()


def _log_egress(settings: Settings) -> None:
    """Says where HTTPS upstream calls go: the proxy's address, never its credentials."""
    proxy = settings.egress_proxy
    if proxy is not None:
        log.info(
            "egress: HTTPS upstream calls tunnel through proxy %s%s; NO_PROXY: %s",
            proxy,
            " (with credentials)" if proxy.authorization else "",
            ",".join(proxy.no_proxy) or "(none)",
        )


def descriptors() -> tuple[int | None, int]:
    """(open file descriptors of this process, or None where /proc is missing; the soft open-files limit)."""
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    try:
        return len(os.listdir("/proc/self/fd")), limit
    except OSError as exc:  # listing takes a descriptor too: none left means exactly what we look for
        return (limit, limit) if exc.errno in (errno.EMFILE, errno.ENFILE) else (None, limit)


def _secret_reader(settings: Settings) -> SecretReader | None:
    if settings.client_secret_file is not None:
        return secret_from_file(settings.client_secret_file)
    if settings.client_secret:
        return secret_from_value(settings.client_secret)
    return None
