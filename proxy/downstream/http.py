"""HTTP front: `POST /serving-endpoints/{name}[/served-models/{model}]/invocations`, unauthenticated, on a
lean asyncio Protocol parsed by httptools (llhttp, strict).

Rules:
1. The parser is a security boundary. Answered 400 and closed, nothing forwarded: whatever llhttp refuses
   (Content-Length with Transfer-Encoding, duplicate or invalid Content-Length, bad chunk sizes, obs-fold,
   bad header names or values, bare LF), HTTP versions other than 1.0 and 1.1, a Transfer-Encoding other
   than one `chunked` (a second Transfer-Encoding header too), upgrades, no Host header in HTTP/1.1 or
   more than one (RFC 9112). Over `max_headers` headers or `max_header_bytes` of request line and
   headers: 431 and closed.
2. Requests on one connection are answered in order, one at a time; reading pauses while one waits.
3. A body over MAX_BODY_BYTES is refused (413, closed) as soon as that is known: by Content-Length before
   any of it, or when the chunks pass the limit. Bodies still arriving share `max_buffered_request_bytes`;
   a request that would pass it gets 503 and its connection closes.
4. The admission slot (in-flight bounds) is taken when the body is complete: slow senders hold none.
5. Answers are relayed as they arrive: status and headers (hop-by-hop and framing dropped, X-Request-Id
   set), body bytes verbatim under the upstream's Content-Length, else chunked (HTTP/1.1) or until close
   (HTTP/1.0); one write per batch of upstream bytes.
6. Backpressure: while the caller's transport is above its high-water mark the upstream is not read.
7. Timeouts, enforced by one sweeper per front every SWEEP_INTERVAL: request head (`header_timeout` from
   accept or the request's first byte), body idle (`body_timeout`), a blocked write (`write_timeout`: the
   caller stopped reading), idle keep-alive (`keepalive_timeout`).
8. A caller that hangs up cancels its upstream request. Errors the sidecar makes are Databricks-shaped JSON.
9. Every request ends in one frozen `RequestRecord` handed to the `on_request` hook.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
import math
import socket
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

import httptools

from proxy import logs, routing
from proxy.config import MAX_BODY_BYTES, ListenAddress, UnixAddress
from proxy.downstream import unix
from proxy.errors import (
    BodyTooLarge,
    EndpointNotFound,
    HeadersTooLarge,
    InvalidRequest,
    MethodNotAllowed,
    Overloaded,
    SidecarError,
)
from proxy.forwarding import (
    NOT_FORWARDED,
    Exchange,
    Forwarder,
    Invocation,
    RequestHook,
    RequestRecord,
    default_headers,
)
from proxy.surface import Forward, LocalAnswer, LocalRequest, Surface
from proxy.transport import NOT_RELAYED, Advice, Head

log = logging.getLogger("serving_sidecar")
FRONT = "http"
SWEEP_INTERVAL = 1.0
_NO_BODY = frozenset({204, 304})
MAX_ROUTES = 1024
LOCAL = "(local routes)"  # the admission key of requests the surface answers (or forwards by their body)
_NO_ADVICE: Advice = []
_UNKNOWN = routing.Route("")  # a cache miss
_ROUTE_HELP = (
    "no such route: use POST /serving-endpoints/<endpoint_name>/invocations or "
    "/serving-endpoints/<endpoint_name>/served-models/<served_model_name>/invocations"
)


@dataclass(frozen=True)
class Limits:
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    write_timeout: float = 60.0
    keepalive_timeout: float = 75.0
    max_connections: int = 4096
    max_buffered_request_bytes: int = 128 * 1024 * 1024
    max_header_bytes: int = 64 * 1024
    max_headers: int = 100


def _status_line(status: int) -> bytes:
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown"
    return f"HTTP/1.1 {status} {phrase}\r\n".encode()


_STATUS_LINES = {status.value: _status_line(status.value) for status in http.HTTPStatus}
_METHODS = {method.encode(): method for method in ("POST", "GET", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH")}


class _Refused(Exception):
    """Raised inside a parser callback: answer `error` and close the connection (rules 1 and 3)."""

    def __init__(self, error: SidecarError) -> None:
        super().__init__(error.message)
        self.error = error


class _Request:
    """One request on a connection: parsed, then answered. Class-level defaults: a request sets only what
    it uses (its body and header block are its own lists)."""

    url = b""
    method = ""
    has_content_type = False
    has_accept = False
    transfer_encoding: bytes | None = None
    expect: bytes | None = None
    connection: bytes | None = None
    content_length = 0
    hosts = 0
    request_id = ""
    head_bytes = 0
    header_count = 0
    headers_done = False
    http11 = True
    keep_alive = True
    route: routing.Route | None = None
    endpoint = ""  # the route's endpoint name
    routed = False  # `route` was looked up
    pairs: list[tuple[bytes, bytes]] | None = None  # every header, kept only for a local route
    task: asyncio.Task[None] | None = None  # a local route being answered
    error: SidecarError | None = None
    body_size = 0
    buffered = 0
    admitted = False
    exchange: Exchange | None = None
    status: int | str = "error"
    bytes_sent = 0
    chunked = False

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.block: list[bytes] = []
        self.body: list[bytes] = []


class HttpFront:
    """The HTTP listener: accepts connections, bounds them, sweeps their timeouts, drains them."""

    def __init__(
        self,
        forwarder: Forwarder,
        *,
        on_request: RequestHook,
        limits: Limits | None = None,
        surface: Surface | None = None,
        socket_mode: int = 0o660,
        socket_group: int | None = None,
    ) -> None:
        self.forwarder = forwarder
        self.on_request = on_request
        self.limits = limits or Limits()
        self.surface = surface  # every route but the invocations one: OpenAI, workspace reads, OAuth facade
        self._socket = (socket_mode, socket_group)
        self._socket_file: unix.SocketFile | None = None
        self.connections: set[HttpConnection] = set()
        self.buffered = 0  # request-body bytes of requests still arriving (rule 3)
        self.routes: dict[bytes, routing.Route | None] = {}  # request target -> route, for repeat callers
        self.in_flight = 0
        self.draining = False
        self.port = 0
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._settled: asyncio.Event | None = None  # set when a request ends during a drain

    def __repr__(self) -> str:
        return f"HttpFront(port={self.port}, connections={len(self.connections)}, in_flight={self.in_flight})"

    async def start(self, address: ListenAddress) -> int:
        """Listen on a TCP address or a Unix socket (made with its mode and group before it listens)."""
        loop = asyncio.get_running_loop()
        if isinstance(address, UnixAddress):
            mode, group = self._socket
            sock, self._socket_file = unix.listening_socket(address.path, mode=mode, group=group)
            self._server = await loop.create_unix_server(lambda: HttpConnection(self), sock=sock)
        else:
            self._server = await loop.create_server(
                lambda: HttpConnection(self), address.host, address.port, backlog=unix.BACKLOG, reuse_address=True
            )
            self.port = int(self._server.sockets[0].getsockname()[1])
        self._sweeper = loop.call_later(SWEEP_INTERVAL, self._sweep)
        return self.port

    def start_without_listener(self) -> None:
        """Serve connections accepted elsewhere, handed in through `adopt` (a worker of `--workers N`)."""
        self._sweeper = asyncio.get_running_loop().call_later(SWEEP_INTERVAL, self._sweep)

    async def adopt(self, sock: socket.socket) -> None:
        """Serve one connection another process accepted."""
        await asyncio.get_running_loop().connect_accepted_socket(lambda: HttpConnection(self), sock)

    async def stop(self, grace: float) -> None:
        """Stop accepting; idle connections close now, busy ones after their answer or after `grace` s."""
        self.draining = True
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.close_if_idle()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                while any(conn.busy for conn in self.connections):
                    self._settled = asyncio.Event()
                    await self._settled.wait()
        for conn in list(self.connections):
            conn.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        if self._socket_file is not None:
            self._socket_file.remove()
            self._socket_file = None

    def settled(self) -> None:
        """A request ended: a drain waiting for quiet looks again."""
        if self._settled is not None:
            self._settled.set()

    def _sweep(self) -> None:
        now = time.monotonic()
        for conn in list(self.connections):
            conn.check_deadlines(now)
        self._sweeper = asyncio.get_running_loop().call_later(SWEEP_INTERVAL, self._sweep)


class HttpConnection(asyncio.Protocol):
    """One caller connection; also the `transport.Sink` of the request being answered."""

    def __init__(self, front: HttpFront) -> None:
        self._front = front
        self._limits = front.limits
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._parsing: _Request | None = None
        self._waiting: deque[_Request] = deque()
        self._current: _Request | None = None
        self._out: list[bytes] = []
        self._write_blocked_at = 0.0
        self._reading_paused = False
        self._refused = False  # a refusal is queued: nothing more is parsed
        self.deadline = math.inf

    def __repr__(self) -> str:
        return f"HttpConnection(busy={self.busy}, waiting={len(self._waiting)})"

    @property
    def busy(self) -> bool:
        return self._current is not None or bool(self._waiting)

    # --- asyncio.Protocol ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        front = self._front
        if len(front.connections) >= self._limits.max_connections or front.draining:
            transport.close()  # over the connection bound: closed at once
            return
        front.connections.add(self)
        self.deadline = time.monotonic() + self._limits.header_timeout

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # bytes already in flight after a refusal
        try:
            self._parser.feed_data(data)
            parsing = self._parsing
            if parsing is not None and not parsing.headers_done and data.endswith(b"\n") and _http09(parsing, data):
                # llhttp takes `GET /path` + CRLF for HTTP/0.9 and waits for more: refused now (rule 1).
                self._refuse(InvalidRequest("HTTP/0.9 requests are not supported: use HTTP/1.1"))
        except httptools.HttpParserUpgrade:
            self._refuse(InvalidRequest("protocol upgrades are not supported: send plain HTTP/1.1 requests"))
        except httptools.HttpParserError as exc:
            refused = exc.__context__  # httptools wraps what a callback raised
            refusal = refused.error if isinstance(refused, _Refused) else None
            self._refuse(refusal or InvalidRequest(f"malformed HTTP request: {_parser_reason(exc)}"))

    def connection_lost(self, exc: Exception | None) -> None:
        front = self._front
        front.connections.discard(self)
        parsing, self._parsing = self._parsing, None
        if parsing is not None:
            front.buffered -= parsing.buffered
        current, self._current = self._current, None
        self._waiting.clear()
        if current is not None:
            if current.exchange is not None:
                current.exchange.cancel()
            if current.task is not None:
                current.task.cancel()
            if current.status == "error":
                current.status = 499  # the caller left before its answer
            self._release(current)
            self._record(current)
        front.settled()

    def pause_writing(self) -> None:
        self._write_blocked_at = time.monotonic()
        if self._current is not None and self._current.exchange is not None:
            self._current.exchange.pause()

    def resume_writing(self) -> None:
        self._write_blocked_at = 0.0
        if self._current is not None and self._current.exchange is not None:
            self._current.exchange.resume()

    # --- httptools callbacks ------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._parsing = _Request()
        self.deadline = time.monotonic() + self._limits.header_timeout

    def on_url(self, url: bytes) -> None:
        request = self._parsing
        assert request is not None
        request.url += url
        request.head_bytes += len(url)
        if request.head_bytes > self._limits.max_header_bytes:
            raise _Refused(HeadersTooLarge("request line and headers are too large"))

    def on_header(self, name: bytes, value: bytes) -> None:
        request = self._parsing
        assert request is not None
        if request.headers_done:
            return  # a chunked body's trailer: not forwarded
        request.header_count += 1
        request.head_bytes += len(name) + len(value) + 4
        if request.header_count > self._limits.max_headers or request.head_bytes > self._limits.max_header_bytes:
            raise _Refused(HeadersTooLarge("too many or too large request headers"))
        if not request.routed:
            self._route(request)  # the target is complete once headers come
        if request.pairs is not None:
            request.pairs.append((name, value))
        lower = name.lower()
        if lower in NOT_FORWARDED:
            if lower == b"host":
                request.hosts += 1
            elif lower == b"content-length":  # llhttp has checked it: digits, once
                request.content_length = int(value)
            else:
                self._note_header(request, lower, value)
            return
        if lower == b"content-type":
            request.has_content_type = True
        elif lower == b"accept":
            request.has_accept = True
        request.block += (name, b": ", value, b"\r\n")

    def on_headers_complete(self) -> None:
        request = self._parsing
        assert request is not None
        request.headers_done = True
        parser = self._parser
        version = parser.get_http_version()
        if version not in ("1.1", "1.0"):
            raise _Refused(InvalidRequest(f"HTTP version {version} is not supported: use HTTP/1.1"))
        if request.transfer_encoding is not None and request.transfer_encoding.strip().lower() != b"chunked":
            raise _Refused(InvalidRequest("Transfer-Encoding other than chunked is not supported"))
        request.http11 = version == "1.1"
        if request.hosts > 1 or (request.http11 and not request.hosts):
            raise _Refused(InvalidRequest("an HTTP/1.1 request needs exactly one Host header"))
        request.keep_alive = parser.should_keep_alive()
        method = parser.get_method()
        request.method = _METHODS.get(method) or method.decode("latin-1")
        if request.connection is not None:
            request.block = _without_connection_tokens(request.block, request.connection)
        request.block.append(default_headers(request.has_content_type, request.has_accept))
        self._judge(request)
        if request.expect is not None and request.expect.lower() == b"100-continue" and request.error is None:
            self._write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.deadline = time.monotonic() + self._limits.body_timeout

    def on_body(self, body: bytes) -> None:
        request = self._parsing
        assert request is not None
        size = len(body)
        request.body_size += size
        if request.body_size > MAX_BODY_BYTES:
            raise _Refused(BodyTooLarge(f"request body exceeds the limit of {MAX_BODY_BYTES} bytes"))
        self.deadline = time.monotonic() + self._limits.body_timeout
        if request.error is not None:
            return  # answered with an error once complete: the body is not kept
        front = self._front
        if front.buffered + size > self._limits.max_buffered_request_bytes:
            raise _Refused(
                Overloaded("the sidecar is buffering too many request bodies; try again shortly", retry_after=1)
            )
        front.buffered += size
        request.buffered += size
        request.body.append(body)

    def on_message_complete(self) -> None:
        request, self._parsing = self._parsing, None
        assert request is not None
        if request.buffered:
            self._front.buffered -= request.buffered
            request.buffered = 0
        self.deadline = math.inf
        if self._current is None and not self._waiting:
            self._current = request
            self._dispatch(request)
            return
        self._waiting.append(request)
        if self._current is None:
            self._next()
        elif not self._reading_paused and self._transport is not None:
            self._reading_paused = True
            self._transport.pause_reading()  # rule 2: one pipelined request waits, no more are read

    # --- transport.Sink (the request being answered) ------------------------------------------------

    def head(self, head: Head, *, advice: Advice) -> None:
        request = self._current
        assert request is not None
        request.status = head.status
        out = self._out
        out.append(_STATUS_LINES.get(head.status) or _status_line(head.status))
        if not advice:
            out += head.block
        else:
            dropped = NOT_RELAYED | {name.lower().encode() for name, _ in advice}
            for name, value in head.headers:
                if name.lower() not in dropped:
                    out += (name, b": ", value, b"\r\n")
            for key, text in advice:
                out.append(f"{key}: {text}\r\n".encode("latin-1"))
        out += (b"X-Request-Id: ", request.request_id.encode(), b"\r\n")
        if head.length is not None:
            out.append(b"Content-Length: %d\r\n" % head.length)
        elif head.status in _NO_BODY:
            pass
        elif request.http11:
            request.chunked = True
            out.append(b"Transfer-Encoding: chunked\r\n")
        else:
            request.keep_alive = False  # HTTP/1.0: the end of the body is the end of the connection
        if not request.keep_alive or self._front.draining:
            request.keep_alive = False
            out.append(b"Connection: close\r\n")
        elif not request.http11:
            out.append(b"Connection: keep-alive\r\n")
        out.append(b"\r\n")

    def body(self, data: bytes) -> None:
        request = self._current
        assert request is not None
        request.bytes_sent += len(data)
        if request.chunked:
            self._out += (b"%x\r\n" % len(data), data, b"\r\n")
        else:
            self._out.append(data)

    def flush(self) -> None:
        if self._out:
            out, self._out = self._out, []
            self._write(b"".join(out))

    def end(self) -> None:
        request = self._current
        assert request is not None
        if request.chunked:
            self._out.append(b"0\r\n\r\n")
        self.flush()
        self._finish(request)

    def fail(self, error: SidecarError, *, advice: Advice) -> None:
        request = self._current
        if request is None:
            return
        if request.status == "error":
            self._answer(request, error, advice)
            return
        # Head already sent: cut the connection, so the caller sees a broken answer, not a short one.
        self.flush()
        request.keep_alive = False
        log.warning("upstream answer cut short: %s", error.message)
        self._finish(request)
        self.abort()

    # --- used by the front --------------------------------------------------------------------------

    def close_if_idle(self) -> None:
        if not self.busy and self._parsing is None and self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def check_deadlines(self, now: float) -> None:
        """Rule 7: close a connection whose head, body, blocked write or keep-alive idle ran out of time."""
        blocked = self._write_blocked_at and now - self._write_blocked_at > self._limits.write_timeout
        if blocked or now > self.deadline:
            self.abort()

    # --- internals ----------------------------------------------------------------------------------

    def _note_header(self, request: _Request, lower: bytes, value: bytes) -> None:
        if lower == b"transfer-encoding":
            if request.transfer_encoding is not None:  # chunked twice, or another coding: llhttp may take it
                raise _Refused(InvalidRequest("more than one Transfer-Encoding header: send one, chunked"))
            request.transfer_encoding = value
        elif lower == b"expect":
            request.expect = value
        elif lower == b"connection":
            request.connection = value
        elif lower == b"x-request-id":
            request.request_id = logs.request_id_from(value.decode("latin-1"))

    def _judge(self, request: _Request) -> None:
        """Route and method from the head alone; an error is answered once the body has arrived."""
        if not request.request_id:
            request.request_id = logs.new_request_id()
        length = request.content_length
        if length > MAX_BODY_BYTES:
            raise _Refused(BodyTooLarge(f"request body is {length} bytes; the limit is {MAX_BODY_BYTES}"))
        if not request.routed:
            self._route(request)
        if request.route is None:
            if self._front.surface is None:
                request.error = EndpointNotFound(_ROUTE_HELP)
        elif request.method != "POST":
            request.error = MethodNotAllowed(f"method {request.method} not allowed: invocations take POST")

    def _route(self, request: _Request) -> None:
        """The invocation route of the request's target (cached per target), or None: a local route."""
        routes = self._front.routes
        route = routes.get(request.url, _UNKNOWN)
        if route is _UNKNOWN:
            route = routing.match(request.url.decode("latin-1"))
            if len(routes) >= MAX_ROUTES:
                routes.clear()
            routes[request.url] = route
        request.route, request.routed = route, True
        if route is not None:
            request.endpoint = route.endpoint
        elif self._front.surface is not None:
            request.pairs = []

    def _next(self) -> None:
        if self._current is not None or not self._waiting:
            return
        request = self._current = self._waiting.popleft()
        if self._reading_paused and not self._waiting and not self._refused and self._transport is not None:
            self._reading_paused = False
            self._transport.resume_reading()
        self._dispatch(request)

    def _dispatch(self, request: _Request) -> None:
        if request.error is not None:
            self._answer(request, request.error)
            return
        if request.route is None:
            self._go_local(request)
            return
        self._forward(request)

    def _forward(self, request: _Request) -> None:
        assert request.route is not None
        front, route = self._front, request.route
        try:
            front.forwarder.admission.acquire(route.endpoint)
        except Overloaded as error:
            self._answer(request, error)
            return
        request.admitted = True
        front.in_flight += 1
        call = Invocation(
            route.endpoint, b"".join(request.body), route.served_model, b"".join(request.block), request.request_id
        )
        request.body = []
        request.exchange = Exchange(front.forwarder, call, self)
        try:
            request.exchange.start()
        except Exception as exc:  # a bug, not a condition: logged with its traceback, answered as a 500
            log.exception("internal error while serving a request")
            request.exchange.cancel()
            self.fail(SidecarError(f"internal error in serving-sidecar ({type(exc).__name__}); see its log"), advice=[])

    def _go_local(self, request: _Request) -> None:
        """A route the surface answers (a coroutine: it may ask the workspace) or forwards by the body."""
        try:
            self._front.forwarder.admission.acquire(LOCAL)
        except Overloaded as error:
            self._answer(request, error)
            return
        context = logs.context_for(request.request_id)
        request.task = asyncio.get_running_loop().create_task(self._serve_local(request), context=context)

    async def _serve_local(self, request: _Request) -> None:
        assert self._front.surface is not None
        local = LocalRequest(
            request.method,
            request.url.decode("latin-1"),
            tuple((name.decode("latin-1"), value.decode("latin-1")) for name, value in request.pairs or ()),
            b"".join(request.body),
        )
        answer: LocalAnswer | Forward | SidecarError
        try:
            answer = await self._front.surface.answer(local)
        except Exception as exc:  # a bug, not a condition
            log.exception("internal error while answering a local route")
            answer = SidecarError(f"internal error in serving-sidecar ({type(exc).__name__}); see its log")
        finally:
            self._front.forwarder.admission.release(LOCAL)
            request.task = None
        if self._current is not request:
            return  # the caller left meanwhile
        if isinstance(answer, Forward):
            request.route, request.endpoint = routing.Route(answer.endpoint, answer.served_model), answer.endpoint
            self._forward(request)
        elif isinstance(answer, SidecarError):
            self._answer(request, answer)
        else:
            self._answer_whole(request, answer.status, answer.headers, answer.body)

    def _answer(self, request: _Request, error: SidecarError, advice: Advice = _NO_ADVICE) -> None:
        """An answer the sidecar makes itself, for `request`."""
        self._answer_whole(request, error.status, [*error.headers().items(), *advice], error.body())

    def _answer_whole(self, request: _Request, status: int, headers: Iterable[tuple[str, str]], body: bytes) -> None:
        """A complete answer made here (an error, a local route): `headers`, then the request id and length."""
        request.status = status
        if self._front.draining:
            request.keep_alive = False
        lines = [*headers, ("X-Request-Id", request.request_id), ("Content-Length", str(len(body)))]
        if not request.keep_alive:
            lines.append(("Connection", "close"))
        head = "".join(f"{name}: {value}\r\n" for name, value in lines).encode("latin-1")
        request.bytes_sent = len(body)
        self._write(b"".join((_STATUS_LINES.get(status) or _status_line(status), head, b"\r\n", body)))
        self._finish(request)

    def _finish(self, request: _Request) -> None:
        if self._current is request:
            self._current = None
        self._release(request)
        self._record(request)
        self._front.settled()
        transport = self._transport
        if transport is None:
            return
        if not request.keep_alive or self._front.draining:
            transport.close()
        elif self._waiting:
            asyncio.get_running_loop().call_soon(self._next)  # not from inside the upstream's callbacks
        else:
            self.deadline = time.monotonic() + self._limits.keepalive_timeout

    def _release(self, request: _Request) -> None:
        """Give back the request's admission slot (once)."""
        if request.admitted:
            request.admitted = False
            self._front.forwarder.admission.release(request.endpoint)
            self._front.in_flight -= 1
        request.exchange = None

    def _record(self, request: _Request) -> None:
        self._front.on_request(
            RequestRecord(
                FRONT,
                request.method,
                request.url.decode("latin-1"),
                request.endpoint,
                request.status,
                time.perf_counter() - request.started,
                request.bytes_sent,
                request.request_id,
            )
        )

    def _refuse(self, error: SidecarError) -> None:
        """Rule 1: answer `error` (after the requests before it), close, forward nothing more."""
        request = self._parsing or _Request()
        self._parsing = None
        self._front.buffered -= request.buffered
        request.buffered = 0
        request.keep_alive = False
        if not request.request_id:
            request.request_id = logs.new_request_id()
        request.error = error
        self._refused = True
        if self._transport is not None and not self._reading_paused:
            self._reading_paused = True
            self._transport.pause_reading()  # nothing after the bad bytes is read
        self._waiting.append(request)
        if self._current is None:
            self._next()

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)


def _http09(request: _Request, data: bytes) -> bool:
    """A request line with no HTTP version: the target, then the end of the line, and no headers yet."""
    return bool(request.url) and request.header_count == 0 and data.rstrip(b"\r\n").endswith(b" " + request.url)


def _without_connection_tokens(block: list[bytes], connection: bytes) -> list[bytes]:
    """Drop the headers the caller's `Connection` header names (they are hop-by-hop too)."""
    named = {token.strip().lower() for token in connection.split(b",")} - {b"", b"close", b"keep-alive"}
    if not named:
        return block
    kept: list[bytes] = []
    for index in range(0, len(block), 4):
        if block[index].lower() not in named:
            kept += block[index : index + 4]
    return kept


def _parser_reason(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text[:200]
