"""Keep-alive connection pools for the data path: one `Pool` per upstream origin, all in `Upstream`.

Rules:
1. Idle connections are reused last-in first-out (the warmest first), each checked right before reuse
   (`UpstreamConnection.reuse_state`): a closed one is dropped, one with unread bytes waits for the loop
   to read them, and the next one is tried.
2. A pool holds at most `size` connections (idle, busy and opening). Beyond that, callers wait for one
   to be released (or to close, freeing room for a new one).
3. One sweeper for all pools runs every SWEEP_INTERVAL seconds: it closes connections idle longer than
   `idle_connection` and fails requests whose first-byte or stream-idle deadline passed.
4. Connect failures are translated here into `ConnectFailed` (nothing was sent: safe to retry) and
   reported to the `on_connect` hook with a bounded result word.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from proxy.config import EgressProxy
from proxy.errors import ConnectFailed
from proxy.upstream import egress
from proxy.upstream.connection import Reuse, UpstreamConnection

SWEEP_INTERVAL = 1.0


@dataclass(frozen=True)
class Timeouts:
    connect: float = 10.0  # TCP + TLS handshake of a new connection
    first_byte: float = 300.0  # until the response headers arrive; Databricks stops models at 297 s
    stream_idle: float = 300.0  # between two reads of the body
    idle_connection: float = 30.0  # a pooled connection idle this long is closed


@dataclass(frozen=True)
class ConnectAttempt:
    """One new upstream connection (TCP + TLS), for observers. `result`: success|timeout|tls_error|error."""

    host: str
    result: str


@dataclass(frozen=True)
class PoolStats:
    """A pool at one instant: `open` counts every connection it holds (busy, opening and idle)."""

    host: str
    open: int
    idle: int


ConnectObserver = Callable[[ConnectAttempt], None]


def _ignore_connect(_: ConnectAttempt) -> None:
    return None


class Pool:
    def __init__(
        self,
        origin: str,
        *,
        ssl_context: ssl.SSLContext,
        size: int,
        timeouts: Timeouts,
        on_connect: ConnectObserver = _ignore_connect,
        proxy: EgressProxy | None = None,
    ) -> None:
        parts = urlsplit(origin)
        self.origin = origin
        self.host = parts.netloc
        self._hostname = parts.hostname or ""
        # TLS always, except a plain http:// workspace on loopback that configuration allowed explicitly
        # (--allow-insecure-loopback-host); config and endpoints refuse every other plain URL.
        self._tls = parts.scheme != "http"
        self._port = parts.port or (443 if self._tls else 80)
        self._ssl_context = ssl_context
        self.size = size
        self.timeouts = timeouts
        self._on_connect = on_connect
        self._proxy = proxy  # every connection of this pool is a tunnel through it, when set
        self._idle: list[UpstreamConnection] = []
        self._busy: set[UpstreamConnection] = set()
        self._opening = 0
        self._waiters: deque[asyncio.Future[UpstreamConnection | None]] = deque()
        self.connects = 0

    def __repr__(self) -> str:
        return f"Pool({self.origin}, busy={len(self._busy)}, idle={len(self._idle)}, connects={self.connects})"

    def stats(self) -> PoolStats:
        return PoolStats(self.host, open=len(self._idle) + len(self._busy) + self._opening, idle=len(self._idle))

    def idle(self) -> UpstreamConnection | None:
        """The warmest idle connection with nothing pending, or None (rule 1).

        One with unread bytes is left for the loop to read (a TLS session ticket is harmless, a close
        takes it out of the pool) and never handed out now; a closed one is dropped.
        """
        for index in range(len(self._idle) - 1, -1, -1):
            conn = self._idle[index]
            state = conn.reuse_state()
            if state is Reuse.OK:
                del self._idle[index]
                self._busy.add(conn)
                return conn
            if state is Reuse.CLOSED:
                del self._idle[index]
                conn.close()
        return None

    async def connect(self) -> UpstreamConnection:
        """An idle connection, a new one, or the next one released (rule 2)."""
        while True:
            conn = self.idle()
            if conn is not None:
                return conn
            if len(self._busy) + self._opening + len(self._idle) < self.size:
                return await self._open_busy()
            if self._idle:  # full, and only connections with unread bytes: let the loop read them first
                await asyncio.sleep(0)
                continue
            waiter: asyncio.Future[UpstreamConnection | None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                handed = await waiter
            finally:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            if handed is not None:
                return handed

    def release(self, conn: UpstreamConnection) -> None:
        """A connection done with its request and kept alive: to a waiter, or to the idle list."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)  # stays busy
                return
        self._busy.discard(conn)
        self._idle.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        """A connection closed: it leaves the pool, and a waiter may open a new one."""
        self._busy.discard(conn)
        with contextlib.suppress(ValueError):
            self._idle.remove(conn)
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def warm(self, connections: int) -> None:
        room = min(connections - len(self._idle), self.size - len(self._busy) - self._opening - len(self._idle))
        results = await asyncio.gather(*(self._open_busy() for _ in range(max(0, room))), return_exceptions=True)
        for conn in results:
            if isinstance(conn, UpstreamConnection):
                self.release(conn)

    def sweep(self, now: float) -> None:
        """Close connections idle too long; fail requests past their deadline (rule 3)."""
        limit = now - self.timeouts.idle_connection
        for conn in [c for c in self._idle if c.idle_since < limit]:
            conn.close()
        for conn in [c for c in self._busy if c.deadline < now]:
            conn.expire(now)

    def close(self) -> None:
        for conn in [*self._idle, *self._busy]:
            conn.close()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    async def _open_busy(self) -> UpstreamConnection:
        self._opening += 1
        try:
            conn = await self._open()
        finally:
            self._opening -= 1
        self._busy.add(conn)
        return conn

    async def _open(self) -> UpstreamConnection:
        try:
            async with asyncio.timeout(self.timeouts.connect):
                _, conn = await egress.open_connection(
                    self._proxy,
                    lambda: UpstreamConnection(self),
                    self._hostname,
                    self._port,
                    ssl_context=self._ssl_context if self._tls else None,
                )
        except TimeoutError:
            raise self._connect_failed("timeout", f"handshake timed out after {self.timeouts.connect:g} s") from None
        except ssl.SSLError as exc:
            raise self._connect_failed("tls_error", f"TLS failed: {exc.reason or type(exc).__name__}") from None
        except OSError as exc:
            raise self._connect_failed("error", exc.strerror or type(exc).__name__) from None
        self.connects += 1
        self._on_connect(ConnectAttempt(self.host, "success"))
        return conn

    def _connect_failed(self, result: str, reason: str) -> ConnectFailed:
        self._on_connect(ConnectAttempt(self.host, result))
        return ConnectFailed(f"cannot connect to upstream {self.host}: {reason}")


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class Upstream:
    """All data-plane pools, keyed by origin, created on first use; implements `transport.Transport`."""

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext,
        pool_size: int,
        timeouts: Timeouts,
        on_connect: ConnectObserver = _ignore_connect,
        egress_proxy: EgressProxy | None = None,
    ) -> None:
        self._ssl_context = ssl_context
        self._pool_size = pool_size
        self.timeouts = timeouts
        self._on_connect = on_connect
        self._egress_proxy = egress_proxy
        self._pools: dict[str, Pool] = {}
        self._sweeper: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        return f"Upstream(pools={list(self._pools.values())})"

    def pool(self, origin: str) -> Pool:
        pool = self._pools.get(origin)
        if pool is None:
            pool = self._pools[origin] = Pool(
                origin,
                ssl_context=self._ssl_context,
                size=self._pool_size,
                timeouts=self.timeouts,
                on_connect=self._on_connect,
                proxy=egress.proxy_for(origin, self._egress_proxy),
            )
            self._start_sweeping()
        return pool

    def idle(self, origin: str) -> UpstreamConnection | None:
        pool = self._pools.get(origin)
        return None if pool is None else pool.idle()

    async def connect(self, origin: str) -> UpstreamConnection:
        return await self.pool(origin).connect()

    async def warm(self, origin: str, connections: int) -> None:
        await self.pool(origin).warm(connections)

    def stats(self) -> list[PoolStats]:
        """Every pool's connection counts now (read at scrape time by the metrics collector)."""
        return [pool.stats() for pool in self._pools.values()]

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.close()

    def _start_sweeping(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(SWEEP_INTERVAL, self._sweep)

    def _sweep(self) -> None:
        now = time.monotonic()
        for pool in list(self._pools.values()):
            pool.sweep(now)
        self._sweeper = asyncio.get_running_loop().call_later(SWEEP_INTERVAL, self._sweep)
