"""The one request path both fronts share: resolve -> token -> send -> relay the answer.

Rules:
1. The body is bytes, never parsed; over MAX_BODY_BYTES it is refused before anything is sent.
2. Steady state is synchronous: a cached resolution, a usable cached token and an idle pooled connection
   are plain look-ups, so the request is written from the front's callback and the answer relayed from
   the upstream connection's callbacks, with no task per request. Whatever is missing (a resolution, a
   token, a connection, a wait before a retry) moves the exchange onto a coroutine, which hands back to
   the same callbacks once the request is sent.
3. The front hands over the caller's headers as a ready block without Host, Authorization, framing or
   hop-by-hop headers (`header_block`); the forwarder adds Host, its bearer token, X-Request-Id and
   Content-Length.
4. An answer that may be retried (401; 403/404 from a route-optimized endpoint; 429/503; 500/502/504 for
   idempotent endpoints) is held, up to HOLD_LIMIT bytes, until it is complete; then `_recover` decides:
   401 mints a new token once, 403/404 re-resolves once (a recreated endpoint), the others follow
   `retries`. An answer that is not retried is relayed as it came.
5. A failed connect sent nothing and follows `retries`. Every retry under `retries` also needs the shared
   `retries.RetryBudget`, so a sustained throttle is not multiplied. A connection that fails after the request was
   written is never re-sent (the model may have run), except a timeout on an idempotent endpoint.
   (Idle connections are checked alive before a request is written: see `upstream.connection`.)
6. Nothing is retried once the answer's head went to the front.
7. Observers get frozen details only: one `UpstreamExchange` per answer relayed (or abandoned), and
   `(endpoint, reason)` per retry.
8. Error answers carry advice for the caller's own retries (`retries.client_retry_headers`):
   `x-should-retry: false` when the sidecar already retried, its budget refused, or the model may have run.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

from multidict import CIMultiDict

from proxy import logs, retries
from proxy.admission import Admission
from proxy.config import MAX_BODY_BYTES
from proxy.credentials.cache import TokenSources
from proxy.endpoints import Resolution, Resolutions, TokenSource
from proxy.errors import BodyTooLarge, ConnectFailed, SidecarError, UpstreamTimeout
from proxy.routing import invocation_url
from proxy.transport import HOP_BY_HOP, Advice, Connection, Head, Sink, Transport

log = logging.getLogger("serving_sidecar")

# Caller headers never forwarded: the forwarder sets its own Host, Authorization, framing and request id.
NOT_FORWARDED = HOP_BY_HOP | {b"host", b"authorization", b"content-length", b"expect", b"x-request-id"}
HOLD_LIMIT = 64 * 1024  # bytes of an answer held while deciding whether to retry it (rule 4)
REPLY_HIGH_WATER = 1 << 20  # bytes buffered for a coroutine reader before the upstream is paused
REPLY_LOW_WATER = 256 * 1024
_NO_ADVICE: Advice = []


def header_block(pairs: Iterable[tuple[str, str]] | Iterable[tuple[bytes, bytes]]) -> bytes:
    """The caller's headers as forwarded (rule 3): `Name: value\\r\\n` lines, with default Content-Type and
    Accept. Fronts with parsed bytes build the same block themselves on the hot path."""
    lines: list[bytes] = []
    seen: set[bytes] = set()
    for name, value in pairs:
        raw_name = name.encode("latin-1") if isinstance(name, str) else name
        raw_value = value.encode("latin-1") if isinstance(value, str) else value
        lower = raw_name.lower()
        if lower not in NOT_FORWARDED:
            lines.append(raw_name + b": " + raw_value + b"\r\n")
            seen.add(lower)
    return b"".join(lines) + default_headers(b"content-type" in seen, b"accept" in seen)


def default_headers(has_content_type: bool, has_accept: bool) -> bytes:
    """The Content-Type and Accept lines added when the caller sent none (one look-up per request)."""
    return _DEFAULT_HEADERS[has_content_type, has_accept]


_DEFAULT_HEADERS = {
    (content_type, accept): (b"" if content_type else b"Content-Type: application/json\r\n")
    + (b"" if accept else b"Accept: application/json\r\n")
    for content_type in (False, True)
    for accept in (False, True)
}


class Invocation(NamedTuple):
    endpoint: str
    body: bytes
    served_model: str | None = None
    headers: bytes = b""  # the caller's forwarded headers, as `header_block` builds them
    request_id: str = ""  # sent upstream as X-Request-Id
    deadline: float | None = None  # time.monotonic() by which the caller wants its answer (gRPC deadline)


class RequestRecord(NamedTuple):
    """One answered request, for metrics and the access log. Holds no header value and no body.

    endpoint: the name the caller asked for ("" when no route matched): hooks turn it into a safe label.
    status: the HTTP status answered, or a word when none was (e.g. "error").
    """

    front: str
    method: str
    path: str  # the request target as received (the access log trims it)
    endpoint: str
    status: int | str
    seconds: float
    bytes_sent: int | None
    request_id: str


RequestHook = Callable[[RequestRecord], None]


class UpstreamExchange(NamedTuple):
    """One upstream answer relayed to a front (or abandoned), timed from the moment its request was sent.

    first_byte_seconds: until the first body byte (the head when there was no body);
    seconds: until the body ended, or the exchange was abandoned (`complete` False).
    """

    endpoint: str
    status: int
    first_byte_seconds: float
    seconds: float
    complete: bool


ExchangeHook = Callable[[UpstreamExchange], None]
RetryHook = Callable[[str, str], None]  # (endpoint, reason)


def _no_exchange_hook(_: UpstreamExchange) -> None:
    return None


def _no_hook(_endpoint: str, _reason: str) -> None:
    return None


@dataclass
class _Progress:
    """What one invocation has used up so far."""

    attempt: int = 1
    waited: float = 0.0
    reauthenticated: bool = False
    reresolved: bool = False
    retries: int = 0  # sends repeated, for any reason
    policy_retried: bool = False  # sent again under the retry policy (429/503/connect/idempotent 5xx)
    budget_spent: bool = False  # the shared retry budget refused a retry the policy allowed


@dataclass(frozen=True)
class _Target:
    origin: str
    request_line: bytes  # b"POST /path HTTP/1.1\r\nHost: host\r\n"


def target_of(url: str) -> _Target:
    scheme, _, rest = url.partition("://")
    netloc, _, path = rest.partition("/")
    line = f"POST /{path} HTTP/1.1\r\nHost: {netloc}\r\n".encode("latin-1")
    return _Target(f"{scheme}://{netloc}", line)


class Forwarder:
    def __init__(
        self,
        resolver: Resolutions,
        credentials: TokenSources,
        transport: Transport,
        *,
        admission: Admission | None = None,
        policy: retries.RetryPolicy | None = None,
        budget: retries.RetryBudget | None = None,
        on_retry: RetryHook = _no_hook,
        on_exchange: ExchangeHook = _no_exchange_hook,
    ) -> None:
        self.resolver = resolver
        self.credentials = credentials
        self.transport = transport
        self.admission = admission or Admission(max_total=1024, max_per_endpoint=1024)
        self.policy = policy or retries.RetryPolicy()
        self.budget = budget or retries.RetryBudget()
        self.on_retry = on_retry
        self.on_exchange = on_exchange
        self._targets: dict[tuple[str, str | None], _Target] = {}

    def __repr__(self) -> str:
        return f"Forwarder({self.resolver!r}, {self.transport!r}, {self.admission!r})"

    @contextlib.contextmanager
    def admit(self, endpoint: str) -> Iterator[None]:
        """A slot for one request, or Overloaded at once; held until the answer is done."""
        with self.admission.slot(endpoint):
            yield

    @contextlib.asynccontextmanager
    async def invoke(self, call: Invocation) -> AsyncIterator[BufferedReply]:
        """The answer to `call` for coroutine callers, its body still arriving; abandoned when the block exits."""
        reply = BufferedReply()
        exchange = reply.exchange = Exchange(self, call, reply)
        exchange.start()
        try:
            await reply.headed()
        except BaseException:
            exchange.cancel()
            raise
        try:
            yield reply
        finally:
            reply.close()

    def target(self, url: str, served_model: str | None) -> _Target:
        """Where to send: the invocation URL, or its served-models form for one served model (cached)."""
        found = self._targets.get((url, served_model))
        if found is None:
            if len(self._targets) > 4096:
                self._targets.clear()
            whole = url if served_model is None else invocation_url(url, served_model)
            found = self._targets[url, served_model] = target_of(whole)
        return found

    async def warm(self, name: str, connections: int) -> Resolution:
        """Resolve `name`, mint its token and open pooled connections to its host ahead of traffic."""
        resolution = await self.resolver.resolve(name)
        source = self.credentials.for_target(resolution.url, resolution.authorization_details, label=name)
        await source.get()
        await self.transport.warm(self.target(resolution.url, None).origin, connections)
        return resolution

    async def warm_all(self, names: Iterable[str], connections: int) -> None:
        """`warm` each name in turn; one that cannot be warmed is logged and left for its first request."""
        for name in names:
            try:
                await self.warm(name, connections)
            except SidecarError as error:
                log.warning("could not warm endpoint %s: %s", name, error.message)


class Exchange:
    """One invocation in flight: a `transport.Receiver` for each attempt, relaying to the front's `Sink`."""

    # Class-level defaults: an exchange on the steady path sets only what it uses.
    _conn: Connection | None = None
    _task: asyncio.Task[None] | None = None
    _resolution: Resolution | None = None
    _source: TokenSource | None = None
    _token = ""
    _held: list[bytes] | None = None
    _held_size = 0
    _head: Head | None = None
    _relaying = False
    _done = False
    _sent_at = 0.0
    _first_byte_at = 0.0
    _progress_: _Progress | None = None

    def __init__(self, forwarder: Forwarder, call: Invocation, sink: Sink) -> None:
        self._f = forwarder
        self.call = call
        self._sink = sink

    @property
    def _progress(self) -> _Progress:
        """What this invocation has used up: made on the first retry decision, not per request."""
        if self._progress_ is None:
            self._progress_ = _Progress()
        return self._progress_

    def __repr__(self) -> str:
        state = "done" if self._done else "relaying" if self._relaying else "holding" if self._held else "sending"
        attempt = 1 if self._progress_ is None else self._progress_.attempt
        return f"Exchange({self.call.endpoint}, {state}, attempt={attempt})"

    # --- the front's side ---------------------------------------------------------------------------

    def start(self) -> None:
        f, call = self._f, self.call
        f.budget.record_request()
        if len(call.body) > MAX_BODY_BYTES:
            self._fail(BodyTooLarge(f"request body is {len(call.body)} bytes; the limit is {MAX_BODY_BYTES}"))
            return
        resolution = f.resolver.peek(call.endpoint)
        if resolution is not None:
            source = f.credentials.for_target(resolution.url, resolution.authorization_details, label=resolution.name)
            token = source.peek()
            if token is not None:
                target = f.target(resolution.url, call.served_model)
                conn = f.transport.idle(target.origin)
                if conn is not None:
                    self._send(conn, resolution, source, token, target)
                    return
        self._go_slow(self._send_slowly(resolution))

    def cancel(self) -> None:
        """The caller left: drop the upstream request (its connection too) and any wait."""
        if self._done:
            return
        self._done = True
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.abort()
            self._observe(complete=False)
        if self._task is not None:
            self._task.cancel()

    def pause(self) -> None:
        if self._conn is not None:
            self._conn.pause_reading()

    def resume(self) -> None:
        if self._conn is not None:
            self._conn.resume_reading()

    # --- transport.Receiver -------------------------------------------------------------------------

    def on_head(self, head: Head) -> None:
        self._head = head
        if self._may_retry(head.status):
            self._held, self._held_size = [], 0
            return
        self._relay_head(head)

    def on_body(self, data: bytes) -> None:
        if not self._first_byte_at:
            self._first_byte_at = time.perf_counter()
        held = self._held
        if held is None:
            self._sink.body(data)
            return
        held.append(data)
        self._held_size += len(data)
        if self._held_size > HOLD_LIMIT:  # too big to hold: relayed as it is, not retried
            self._release_held()

    def flush(self) -> None:
        if self._relaying:
            self._sink.flush()

    def on_end(self) -> None:
        self._conn = None
        if self._held is not None:
            self._go_slow(self._recover_held())
            return
        self._done = True
        ended = time.perf_counter()  # the upstream's part ends here, before the front's write
        self._sink.end()  # the caller has its answer before the bookkeeping
        self._observe(complete=True, now=ended)

    def on_lost(self, error: SidecarError) -> None:
        self._conn = None
        if self._relaying:
            self._done = True
            self._observe(complete=False)
            self._sink.fail(error, advice=_NO_ADVICE)
        elif isinstance(error, UpstreamTimeout) and self._held is None:
            self._go_slow(self._retry_failure(error, "timeout"))
        else:
            self._fail(error)

    # --- internals ----------------------------------------------------------------------------------

    def _may_retry(self, status: int) -> bool:
        if status < 401:
            return False
        progress = self._progress
        if status == 401:
            return not progress.reauthenticated
        if status in (403, 404):
            return self._resolution is not None and self._resolution.route_optimized and not progress.reresolved
        if status in retries.SAFE_STATUSES:
            return True
        return status in retries.UNSAFE_STATUSES and self.call.endpoint in self._f.policy.idempotent

    def _relay_head(self, head: Head) -> None:
        self._relaying = True
        self._sink.head(head, advice=self._advice(head.status) if head.status >= 400 else _NO_ADVICE)

    def _release_held(self) -> None:
        held, self._held = self._held or [], None
        assert self._head is not None
        self._relay_head(self._head)
        for data in held:
            self._sink.body(data)

    def _send(self, conn: Connection, resolution: Resolution, source: TokenSource, token: str, target: _Target) -> None:
        call = self.call
        self._conn, self._resolution, self._source, self._token = conn, resolution, source, token
        if self._head is not None:  # a retry: forget the previous answer
            self._held, self._head, self._first_byte_at = None, None, 0.0
        self._sent_at = time.perf_counter()
        request = b"".join(
            (
                target.request_line,
                call.headers,
                b"Authorization: Bearer ",
                token.encode("latin-1"),
                b"\r\nX-Request-Id: ",
                call.request_id.encode("latin-1"),
                b"\r\nContent-Length: %d\r\n\r\n" % len(call.body),
            )
        )
        conn.send(request, call.body, self)

    def _go_slow(self, work: Coroutine[Any, Any, None]) -> None:
        context = logs.context_for(self.call.request_id)
        self._task = asyncio.get_running_loop().create_task(self._guarded(work), context=context)

    async def _guarded(self, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except SidecarError as error:
            self._fail(error)
        except Exception as exc:
            log.exception("internal error while forwarding a request")
            self._fail(SidecarError(f"internal error in serving-sidecar ({type(exc).__name__}); see its log"))

    async def _send_slowly(self, resolution: Resolution | None) -> None:
        """Resolve, mint and connect as needed, then send (rule 2); connect failures follow `retries`."""
        f, name = self._f, self.call.endpoint
        if resolution is None:
            resolution = await f.resolver.resolve(name)
        while not self._done:
            # A retry after a wait uses the newest resolution: the endpoint may have been recreated meanwhile.
            resolution = f.resolver.cached(name) or resolution
            source = f.credentials.for_target(resolution.url, resolution.authorization_details, label=resolution.name)
            token = await source.get()
            target = f.target(resolution.url, self.call.served_model)
            try:
                conn = await f.transport.connect(target.origin)
            except ConnectFailed:
                if await self._wait_for_retry(failure="connect"):
                    continue
                raise
            if self._done:  # the caller left while we connected: the connection goes back unused
                conn.abort()
                return
            self._send(conn, resolution, source, token, target)
            return

    async def _retry_failure(self, error: SidecarError, failure: str) -> None:
        if not await self._wait_for_retry(failure=failure):
            raise error
        await self._send_slowly(self._resolution)

    async def _recover_held(self) -> None:
        """The held answer is complete: send again (rule 4), or relay it as it came."""
        head, held = self._head, self._held or []
        assert head is not None and self._resolution is not None and self._source is not None
        retry_with = await self._recover(head, self._resolution, self._source)
        if retry_with is not None:
            await self._send_slowly(retry_with)
            return
        self._held = None
        self._relay_head(head)
        for data in held:
            self._sink.body(data)
        self.on_end()

    async def _recover(self, head: Head, resolution: Resolution, source: TokenSource) -> Resolution | None:
        progress, name = self._progress, self.call.endpoint
        if head.status == 401 and not progress.reauthenticated:
            progress.reauthenticated = True
            source.invalidate(self._token)
            self._note_retry("unauthorized")
            return resolution
        if head.status in (403, 404) and resolution.route_optimized and not progress.reresolved:
            progress.reresolved = True
            fresh = await self._f.resolver.recheck(resolution)
            if fresh is not None:
                self._note_retry("endpoint_recreated")
                return fresh
            return None
        retry_after = _header(head, b"retry-after")
        if await self._wait_for_retry(status=head.status, retry_after=retry_after):
            return self._f.resolver.cached(name) or resolution
        return None

    async def _wait_for_retry(
        self, *, status: int | None = None, failure: str | None = None, retry_after: str | None = None
    ) -> bool:
        """Apply the retry policy; if it says retry, wait and return True. Never waits past a caller deadline."""
        policy, progress, call = self._f.policy, self._progress, self.call
        if call.deadline is not None:
            left = call.deadline - time.monotonic()
            policy = dataclasses.replace(policy, budget=min(policy.budget, progress.waited + left))
        decision = retries.decide(
            policy,
            endpoint=call.endpoint,
            attempt=progress.attempt,
            waited=progress.waited,
            status=status,
            failure=failure,
            retry_after=retry_after,
        )
        if not decision.retry:
            return False
        if not self._f.budget.try_retry():  # a sustained throttle is not multiplied
            progress.budget_spent = True
            return False
        progress.policy_retried = True
        self._note_retry(decision.reason)
        await asyncio.sleep(decision.delay)
        progress.attempt += 1
        progress.waited += decision.delay
        return True

    def _note_retry(self, reason: str) -> None:
        self._progress.retries += 1
        self._f.on_retry(self.call.endpoint, reason)

    def _fail(self, error: SidecarError) -> None:
        if self._done:
            return
        self._done = True
        self._sink.fail(error, advice=self._advice(error.status, error))

    def _advice(self, status: int, error: SidecarError | None = None) -> Advice:
        """Whether the caller should send this again (`retries.client_retry_headers`)."""
        progress = self._progress_
        outcome = retries.Outcome(
            sent=self._sent_at > 0,
            retried=progress is not None and progress.policy_retried,
            budget_spent=progress is not None and progress.budget_spent,
            idempotent=self.call.endpoint in self._f.policy.idempotent,
        )
        return retries.client_retry_headers(status, outcome, error)

    def _observe(self, *, complete: bool, now: float | None = None) -> None:
        if not self._sent_at or self._head is None:
            return
        now, sent = now or time.perf_counter(), self._sent_at  # both perf_counter: never negative below
        first = self._first_byte_at or now
        self._f.on_exchange(UpstreamExchange(self.call.endpoint, self._head.status, first - sent, now - sent, complete))


def _header(head: Head, name: bytes) -> str | None:
    for key, value in head.headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class BufferedReply:
    """A `Sink` that coroutine callers read as a `transport.Reply`: head, then `chunks()` until the end.

    Bounded: beyond REPLY_HIGH_WATER buffered bytes the upstream connection is paused until the reader
    catches up to REPLY_LOW_WATER.
    """

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.exchange: Exchange | None = None
        self.status = 0
        self.headers: CIMultiDict[str] = CIMultiDict()
        self._headed: asyncio.Future[None] = loop.create_future()
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._wake: asyncio.Future[None] | None = None
        self._ended = False
        self._error: SidecarError | None = None

    def __repr__(self) -> str:
        return f"BufferedReply(status={self.status}, buffered={self._buffered}, ended={self._ended})"

    async def headed(self) -> None:
        await self._headed

    def head(self, head: Head, *, advice: Advice) -> None:
        self.status = head.status
        self.headers = CIMultiDict((n.decode("latin-1"), v.decode("latin-1")) for n, v in head.headers)
        if not self._headed.done():
            self._headed.set_result(None)

    def body(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > REPLY_HIGH_WATER and not self._paused and self.exchange is not None:
            self._paused = True
            self.exchange.pause()
        self._wakeup()

    def flush(self) -> None:
        return None

    def end(self) -> None:
        self._ended = True
        self._wakeup()

    def fail(self, error: SidecarError, *, advice: Advice) -> None:
        if not self._headed.done():
            self._headed.set_exception(error)
            return
        self._error = error
        self._wakeup()

    async def chunks(self) -> AsyncIterator[bytes]:
        """Body chunks as they arrive; the upstream's failure (e.g. UpstreamTimeout) is raised here."""
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._paused and self._buffered < REPLY_LOW_WATER and self.exchange is not None:
                    self._paused = False
                    self.exchange.resume()
                yield chunk
            elif self._error is not None:
                raise self._error
            elif self._ended:
                return
            else:
                self._wake = asyncio.get_running_loop().create_future()
                await self._wake

    def close(self) -> None:
        if not self._ended and self.exchange is not None:
            self.exchange.cancel()

    def _wakeup(self) -> None:
        wake, self._wake = self._wake, None
        if wake is not None and not wake.done():
            wake.set_result(None)
