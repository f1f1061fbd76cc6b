"""The one request path both fronts share: admit -> resolve -> token -> send -> hand the reply back.

Rules:
1. The body is bytes, never parsed; over MAX_BODY_BYTES it is refused before anything is sent.
2. Requests beyond the in-flight bounds are shed at once: fronts hold `admit()` from before reading the body.
3. The caller's Authorization and hop-by-hop headers are dropped; the sidecar's bearer token is set.
4. An upstream 401 invalidates the token, mints a new one and sends once more.
5. An upstream 403/404 from a route-optimized endpoint re-resolves the name (rate-limited); if the
   endpoint was recreated (new URL or authorization details) the request is sent once more.
6. A reset on a reused pooled connection before any response byte is sent once more, on a fresh one.
7. 429/503/connect failures (and, for idempotent endpoints, 500/502/504/timeouts) follow `retries`.
8. Nothing is retried after the reply has been handed to the front.
9. Observers get frozen details only (`UpstreamExchange` when the reply handed to the front is closed,
   `(endpoint, reason)` for each retry); their endpoint names resolved, so they are safe metric labels.
10. An upstream answer that is not final (a 1xx the client library handed on, such as 101) is a 502.
11. Retries under rule 7 also need the shared `retries.RetryBudget`; the invocation's `retries.Outcome`
    records what was done, for the fronts' advice to clients (`retries.client_retry_headers`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from multidict import CIMultiDict, CIMultiDictProxy

from proxy import retries
from proxy.admission import Admission
from proxy.config import MAX_BODY_BYTES
from proxy.credentials.sources import Credentials
from proxy.endpoints import Resolution, Resolver, TokenSource
from proxy.errors import BodyTooLarge, ConnectFailed, StaleConnection, UpstreamTimeout, UpstreamUnreachable
from proxy.routing import invocation_url
from proxy.upstream import Reply, Upstream, origin_of

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_NOT_FORWARDED = HOP_BY_HOP | {"host", "authorization", "content-length", "expect"}
_NOT_RETURNED = HOP_BY_HOP | {"content-length"}


@dataclass(frozen=True)
class Invocation:
    endpoint: str
    body: bytes
    served_model: str | None = None
    headers: Iterable[tuple[str, str]] = field(default=())  # the caller's headers, as received
    request_id: str | None = None  # sent upstream as X-Request-Id (replacing the caller's, if any)
    deadline: float | None = None  # time.monotonic() by which the caller wants its answer (gRPC deadline)


@dataclass(frozen=True)
class UpstreamExchange:
    """One upstream request whose reply was handed to a front, timed from the moment it was sent.

    first_byte_seconds: until the first body byte (the response headers when the body is empty);
    seconds: until the body was read to its end, or the reply was closed before that (`complete` False).
    """

    endpoint: str
    status: int
    first_byte_seconds: float
    seconds: float
    complete: bool


ExchangeHook = Callable[[UpstreamExchange], None]


def _no_exchange_hook(_: UpstreamExchange) -> None:
    return None


def exchange_of(endpoint: str, reply: Reply) -> UpstreamExchange:
    """The frozen timing details of a closed reply."""
    finished = reply.finished_at if reply.finished_at is not None else reply.headers_at
    first_byte = reply.first_byte_at if reply.first_byte_at is not None else reply.headers_at
    return UpstreamExchange(
        endpoint=endpoint,
        status=reply.status,
        first_byte_seconds=max(0.0, first_byte - reply.sent_at),
        seconds=max(0.0, finished - reply.sent_at),
        complete=reply.completed,
    )


def upstream_headers(
    downstream: Iterable[tuple[str, str]], access_token: str, *, request_id: str | None = None
) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict(
        (name, value) for name, value in downstream if name.lower() not in _NOT_FORWARDED
    )
    headers.setdefault("Content-Type", "application/json")
    headers.setdefault("Accept", "application/json")
    headers["Authorization"] = f"Bearer {access_token}"
    if request_id is not None:
        headers["X-Request-Id"] = request_id
    return headers


def downstream_headers(upstream: CIMultiDictProxy[str] | Mapping[str, str]) -> list[tuple[str, str]]:
    return [(name, value) for name, value in upstream.items() if name.lower() not in _NOT_RETURNED]


RetryHook = Callable[[str, str], None]  # (endpoint, reason)


def _no_hook(_endpoint: str, _reason: str) -> None:
    return None


@dataclass
class _Progress:
    """What one invocation has used up so far."""

    attempt: int = 1
    waited: float = 0.0
    reauthenticated: bool = False
    reresolved: bool = False
    fresh: bool = False
    outcome: retries.Outcome = field(default_factory=retries.Outcome)


class Forwarder:
    def __init__(
        self,
        resolver: Resolver,
        credentials: Credentials,
        upstream: Upstream,
        *,
        admission: Admission | None = None,
        policy: retries.RetryPolicy | None = None,
        budget: retries.RetryBudget | None = None,
        on_retry: RetryHook = _no_hook,
        on_exchange: ExchangeHook = _no_exchange_hook,
    ) -> None:
        self._resolver = resolver
        self._credentials = credentials
        self._upstream = upstream
        self.admission = admission or Admission(max_total=1024, max_per_endpoint=1024)
        self._policy = policy or retries.RetryPolicy()
        self._budget = budget or retries.RetryBudget()
        self._on_retry = on_retry
        self._on_exchange = on_exchange

    def __repr__(self) -> str:
        return f"Forwarder({self._resolver!r}, {self._upstream!r}, {self.admission!r})"

    @contextlib.contextmanager
    def admit(self, endpoint: str) -> Iterator[None]:
        """A slot for one request, or Overloaded at once. Fronts take it before reading the request body
        (so bodies in memory are bounded too) and hold it until the reply is closed."""
        with self.admission.slot(endpoint):
            yield

    @contextlib.asynccontextmanager
    async def invoke(self, call: Invocation, outcome: retries.Outcome | None = None) -> AsyncIterator[Reply]:
        """The upstream reply to `call`, its body still streaming; closed when the block exits.

        `outcome`, when given, is filled in with what was done (rule 11), whether a reply comes or an error.
        """
        if len(call.body) > MAX_BODY_BYTES:
            raise BodyTooLarge(f"request body is {len(call.body)} bytes; the limit is {MAX_BODY_BYTES}")
        reply = await self._send_with_recovery(call, outcome or retries.Outcome())
        try:
            yield reply
        finally:
            reply.close()
            self._on_exchange(exchange_of(call.endpoint, reply))

    async def _send_with_recovery(self, call: Invocation, outcome: retries.Outcome) -> Reply:
        resolution = await self._resolver.resolve(call.endpoint)
        self._budget.record_request()
        outcome.idempotent = call.endpoint in self._policy.idempotent
        progress = _Progress(outcome=outcome)
        while True:
            # A retry after a wait uses the newest resolution: the endpoint may have been recreated meanwhile.
            resolution = self._resolver.cached(call.endpoint) or resolution
            source = self._credentials.for_target(
                resolution.url, resolution.authorization_details, label=resolution.name
            )
            access_token = await source.get()
            reply = await self._attempt(resolution, call, access_token, progress)
            if reply is None:
                continue
            try:
                retry_with = await self._recover(reply, resolution, call, progress, source, access_token)
            except BaseException:
                reply.close()
                raise
            if retry_with is None:
                return reply
            reply.close()
            resolution = retry_with

    async def _attempt(
        self, resolution: Resolution, call: Invocation, access_token: str, progress: _Progress
    ) -> Reply | None:
        """One send; None when it failed in a way that is retried (rules 6 and 7)."""
        progress.outcome.sent = True
        try:
            return await self._send(resolution, call, access_token, fresh=progress.fresh)
        except StaleConnection:
            if progress.fresh:
                raise
            progress.fresh = True
            self._on_retry(call.endpoint, "stale_connection")
        except (ConnectFailed, UpstreamTimeout) as failure:
            kind = "connect" if isinstance(failure, ConnectFailed) else "timeout"
            if not await self._wait_for_retry(call, progress, failure=kind):
                raise
        return None

    async def _recover(
        self,
        reply: Reply,
        resolution: Resolution,
        call: Invocation,
        progress: _Progress,
        source: TokenSource,
        access_token: str,
    ) -> Resolution | None:
        """None to hand `reply` to the caller, or the resolution to send again with (rules 4, 5 and 7)."""
        if reply.status == 401 and not progress.reauthenticated:
            progress.reauthenticated = True
            source.invalidate(access_token)
            self._on_retry(call.endpoint, "unauthorized")
            return resolution
        if reply.status in (403, 404) and resolution.route_optimized and not progress.reresolved:
            progress.reresolved = True
            fresh = await self._resolver.recheck(resolution)
            if fresh is not None:
                self._on_retry(call.endpoint, "endpoint_recreated")
                return fresh
        retry_after = reply.headers.get("Retry-After")
        if await self._wait_for_retry(call, progress, status=reply.status, retry_after=retry_after, reply=reply):
            return resolution
        return None

    async def _wait_for_retry(
        self,
        call: Invocation,
        progress: _Progress,
        *,
        status: int | None = None,
        failure: str | None = None,
        retry_after: str | None = None,
        reply: Reply | None = None,
    ) -> bool:
        """Apply the retry policy; if it says retry, release `reply`, wait and return True.

        With a caller deadline, waits never run past it: the upstream's own answer goes back instead.
        """
        policy = self._policy
        if call.deadline is not None:
            left = call.deadline - time.monotonic()
            policy = dataclasses.replace(policy, budget=min(policy.budget, progress.waited + left))
        endpoint = call.endpoint
        decision = retries.decide(
            policy,
            endpoint=endpoint,
            attempt=progress.attempt,
            waited=progress.waited,
            status=status,
            failure=failure,
            retry_after=retry_after,
        )
        if not decision.retry:
            return False
        if not self._budget.try_retry():  # rule 11: a sustained throttle is not multiplied
            progress.outcome.budget_spent = True
            return False
        progress.outcome.retried = True
        if reply is not None:
            reply.close()
        self._on_retry(endpoint, decision.reason)
        await asyncio.sleep(decision.delay)
        progress.attempt += 1
        progress.waited += decision.delay
        return True

    async def _send(self, resolution: Resolution, call: Invocation, access_token: str, *, fresh: bool) -> Reply:
        url = invocation_url(resolution.url, call.served_model)
        headers = upstream_headers(call.headers, access_token, request_id=call.request_id)
        reply = await self._upstream.send("POST", url, headers=headers, body=call.body, fresh=fresh)
        if reply.status < 200:  # rule 10: e.g. 101 Switching Protocols, which no caller can use
            reply.close()
            raise UpstreamUnreachable(f"upstream {origin_of(url)} answered HTTP {reply.status}, not a final response")
        return reply

    async def warm(self, name: str, connections: int) -> Resolution:
        """Resolve `name`, mint its token and open pooled connections to its host ahead of traffic."""
        resolution = await self._resolver.resolve(name)
        source = self._credentials.for_target(resolution.url, resolution.authorization_details, label=name)
        await source.get()
        await self._upstream.warm(resolution.url, connections)
        return resolution
