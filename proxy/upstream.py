"""Upstream pools: one keep-alive connection pool per upstream host, over one TLS context built once.

aiohttp is used only here; its exceptions are translated at this edge into `UpstreamUnreachable` (502) and
`UpstreamTimeout` (504). Bodies pass through as bytes: no decompression, no parsing. This module knows
nothing about tokens: callers hand it complete headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import ssl
import time
import types
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.errors import ConnectFailed, StaleConnection, UpstreamTimeout, UpstreamUnreachable

LARGE_BODY = 1 << 20
MAX_CONTROL_PLANE_BYTES = 1 << 20  # token and metadata answers are a few KiB; refuse anything larger


@dataclass(frozen=True)
class Timeouts:
    connect: float = 10.0  # TCP + TLS handshake (aiohttp's sock_connect: excludes waiting for a pool slot)
    first_byte: float = 300.0  # until the response headers arrive; Databricks stops models at 297 s
    stream_idle: float = 300.0  # between two body chunks
    idle_connection: float = 30.0  # a pooled connection idle this long is closed


def build_ssl_context(ca_bundle: Path | None = None) -> ssl.SSLContext:
    """The one TLS context for all upstreams: system CAs plus `ca_bundle`. Costs ~20 ms; build once."""
    context = ssl.create_default_context()
    if ca_bundle is not None:
        context.load_verify_locations(cafile=str(ca_bundle))
    return context


@dataclass(frozen=True)
class ConnectAttempt:
    """One new upstream connection (TCP + TLS), for observers. `result`: success|timeout|tls_error|error."""

    host: str
    result: str


@dataclass(frozen=True)
class PoolStats:
    """A pool at one instant: `open` counts every connection it holds (in use or opening, and idle)."""

    host: str
    open: int
    idle: int


ConnectObserver = Callable[[ConnectAttempt], None]


def _ignore_connect(_: ConnectAttempt) -> None:
    return None


def connect_result(exc: BaseException) -> str | None:
    """The `ConnectAttempt.result` for an exception from opening a request, or None if not a connect failure."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ClientSSLError):
        return "tls_error"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "error"
    return None


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


# A reused connection that fails this soon after the request went out was dead before it was used
# (the server closed it while idle). A later failure may come after the model ran: never stale then.
STALE_WINDOW = 1.0


@dataclass
class _Attempt:
    """Per-request trace context: did this request go out on a reused pooled connection, and when?"""

    reused: bool = False
    started: float = field(default_factory=time.perf_counter)

    def looks_stale(self) -> bool:
        return self.reused and time.perf_counter() - self.started < STALE_WINDOW


@contextlib.contextmanager
def translate_errors(url: str, attempt: _Attempt | None = None) -> Iterator[None]:
    """Map aiohttp/asyncio failures to the sidecar's errors. Never includes headers (tokens) in messages."""
    host = urlsplit(url).netloc
    try:
        yield
    except aiohttp.ConnectionTimeoutError as exc:  # before TimeoutError, of which it is a subclass
        raise ConnectFailed(f"cannot connect to upstream {host}: handshake timed out") from exc
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
        raise UpstreamTimeout(f"upstream {host} did not answer in time") from exc
    except aiohttp.ClientConnectorError as exc:
        raise ConnectFailed(f"cannot connect to upstream {host}: {exc.strerror or exc}") from exc
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
        if attempt is not None and attempt.looks_stale():
            raise StaleConnection(f"pooled connection to {host} was closed by the server") from exc
        raise UpstreamUnreachable(f"upstream {host} closed the connection: {type(exc).__name__}") from exc
    except aiohttp.ClientError as exc:
        raise UpstreamUnreachable(f"upstream {host} failed: {type(exc).__name__}") from exc


class Reply:
    """An upstream response whose body is still on the wire. Close it (`async with` or `close()`)."""

    def __init__(self, response: aiohttp.ClientResponse, stream_idle: float, *, sent_at: float | None = None) -> None:
        self._response = response
        self._stream_idle = stream_idle
        self.status = response.status
        self.headers: CIMultiDictProxy[str] = response.headers
        # time.perf_counter() instants: request sent, headers in, first body byte in, body done or closed.
        self.headers_at = time.perf_counter()
        self.sent_at = self.headers_at if sent_at is None else sent_at
        self.first_byte_at: float | None = None
        self.finished_at: float | None = None
        self.completed = False  # the body was read to its end

    def __repr__(self) -> str:
        return f"Reply(status={self.status}, closed={self._response.closed})"

    async def chunks(self) -> AsyncIterator[bytes]:
        """Body chunks as they arrive; UpstreamTimeout if none comes within the stream idle timeout."""
        url = str(self._response.url)
        with translate_errors(url):
            while True:
                async with asyncio.timeout(self._stream_idle):
                    chunk = await self._response.content.readany()
                if not chunk:
                    self.finished_at = time.perf_counter()
                    self.completed = True
                    return
                if self.first_byte_at is None:
                    self.first_byte_at = time.perf_counter()
                yield chunk

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])

    def close(self) -> None:
        """Release the connection to the pool (or drop it when the body was not fully read)."""
        if self.finished_at is None:
            self.finished_at = time.perf_counter()
        self._response.release() if self._response.content.at_eof() else self._response.close()


class Pool:
    """Keep-alive connections to one upstream host, plus an unpooled session for fresh-connection retries."""

    def __init__(
        self,
        origin: str,
        *,
        ssl_context: ssl.SSLContext,
        size: int,
        timeouts: Timeouts,
        on_connect: ConnectObserver = _ignore_connect,
    ) -> None:
        self.origin = origin
        self.host = urlsplit(origin).netloc
        self.connects = 0
        self._on_connect = on_connect
        self._ssl_context = ssl_context
        self._timeouts = timeouts
        self._connector = aiohttp.TCPConnector(
            limit=size,
            limit_per_host=size,
            keepalive_timeout=timeouts.idle_connection,
            ssl=ssl_context,
            ttl_dns_cache=300,
        )
        self._session = self._new_session(self._connector)
        self._fresh: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"Pool({self.origin}, connects={self.connects}, idle={self.idle_connections})"

    def _new_session(self, connector: aiohttp.TCPConnector) -> aiohttp.ClientSession:
        trace = aiohttp.TraceConfig()
        trace.on_connection_create_end.append(self._count_connect)
        trace.on_connection_reuseconn.append(self._mark_reused)
        return aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
            # sock_read is left unset: the first byte and the gaps between chunks have their own timeouts.
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._timeouts.connect),
            trace_configs=[trace],
            trust_env=False,
        )

    @property
    def idle_connections(self) -> int:
        return sum(len(conns) for conns in self._connector._conns.values())

    def stats(self) -> PoolStats:
        idle = self.idle_connections
        return PoolStats(self.host, open=len(self._connector._acquired) + idle, idle=idle)

    async def _count_connect(self, *_: object) -> None:
        self.connects += 1
        self._on_connect(ConnectAttempt(self.host, "success"))

    @staticmethod
    async def _mark_reused(_session: object, context: types.SimpleNamespace, _params: object) -> None:
        if isinstance(context.trace_request_ctx, _Attempt):
            context.trace_request_ctx.reused = True

    def _fresh_session(self) -> aiohttp.ClientSession:
        if self._fresh is None:
            connector = aiohttp.TCPConnector(force_close=True, ssl=self._ssl_context)
            self._fresh = self._new_session(connector)
        return self._fresh

    async def open(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes | None, *, fresh: bool = False
    ) -> aiohttp.ClientResponse:
        """Send and wait for the response headers (bounded by the first-byte timeout).

        `fresh=True` uses a new connection instead of a pooled one. A reset on a reused connection before
        any response byte, within STALE_WINDOW of sending, raises StaleConnection, which the caller may retry
        with `fresh=True`.
        """
        session = self._fresh_session() if fresh else self._session
        attempt = _Attempt()
        # aiohttp writes a BytesIO in chunks, yielding to the loop; BytesIO shares the bytes, no copy.
        data = io.BytesIO(body) if body is not None and len(body) > LARGE_BODY else body
        with translate_errors(url, attempt), self._observe_connect_failure():
            async with asyncio.timeout(self._timeouts.first_byte):
                return await session.request(
                    method, url, headers=headers, data=data, allow_redirects=False, trace_request_ctx=attempt
                )

    @contextlib.contextmanager
    def _observe_connect_failure(self) -> Iterator[None]:
        try:
            yield
        except aiohttp.ClientError as exc:
            result = connect_result(exc)
            if result is not None:
                self._on_connect(ConnectAttempt(self.host, result))
            raise

    async def close(self) -> None:
        await self._session.close()
        if self._fresh is not None:
            await self._fresh.close()


class Upstream:
    """All pools, keyed by origin, created on first use and kept for the process lifetime."""

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext,
        pool_size: int,
        timeouts: Timeouts,
        on_connect: ConnectObserver = _ignore_connect,
    ) -> None:
        self._ssl_context = ssl_context
        self._pool_size = pool_size
        self.timeouts = timeouts
        self._on_connect = on_connect
        self._pools: dict[str, Pool] = {}

    def __repr__(self) -> str:
        return f"Upstream(pools={list(self._pools)})"

    def pool(self, url: str) -> Pool:
        origin = origin_of(url)
        pool = self._pools.get(origin)
        if pool is None:
            pool = self._pools[origin] = Pool(
                origin,
                ssl_context=self._ssl_context,
                size=self._pool_size,
                timeouts=self.timeouts,
                on_connect=self._on_connect,
            )
        return pool

    def stats(self) -> list[PoolStats]:
        """Every pool's connection counts now (read at scrape time by the metrics collector)."""
        return [pool.stats() for pool in self._pools.values()]

    async def send(
        self, method: str, url: str, *, headers: Mapping[str, str], body: bytes | None = None, fresh: bool = False
    ) -> Reply:
        """Start a request; the returned Reply's body is streamed. Raises UpstreamUnreachable/Timeout."""
        sent_at = time.perf_counter()
        response = await self.pool(url).open(method, url, headers, body, fresh=fresh)
        return Reply(response, self.timeouts.stream_idle, sent_at=sent_at)

    async def fetch(
        self, method: str, url: str, *, headers: Mapping[str, str], body: bytes | None = None
    ) -> tuple[int, CIMultiDict[str], bytes]:
        """A whole small response (control-plane calls): status, headers, body. An answer over
        MAX_CONTROL_PLANE_BYTES is not read further: UpstreamUnreachable, and the connection is dropped."""
        reply = await self.send(method, url, headers=headers, body=body)
        try:
            answer = bytearray()
            async for chunk in reply.chunks():
                answer += chunk
                if len(answer) > MAX_CONTROL_PLANE_BYTES:
                    raise UpstreamUnreachable(f"{origin_of(url)} answered over {MAX_CONTROL_PLANE_BYTES} bytes")
            return reply.status, CIMultiDict(reply.headers), bytes(answer)
        finally:
            reply.close()

    async def warm(self, url: str, connections: int) -> None:
        """Open up to `connections` keep-alive connections to `url`'s host with cheap HEAD requests.

        The answer (any status) does not matter; the connection stays in the pool. Failures are ignored:
        warming is an optimisation, the first real request reports real errors.
        """

        async def one() -> None:
            with contextlib.suppress(Exception):
                reply = await self.send("HEAD", url, headers={})
                await reply.read()
                reply.close()

        await asyncio.gather(*(one() for _ in range(connections)))

    async def close(self) -> None:
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            await pool.close()
