"""Refresh-ahead token caching: one `RefreshingToken` per credential, many of them in a `TokenCache`.

Invariants:
1. At most one fetch per credential runs at a time (single flight); concurrent callers share it.
2. `get()` returns the cached token while it is usable and never waits on the token server then.
3. A background task refreshes at `schedule.refresh_at`; a failed refresh keeps the old token, records
   the error and retries after `schedule.backoff`.
4. With no usable token, `get()` fetches (sharing any fetch in flight); inside a failure backoff it
   fails at once with `NoCredential` (503 + Retry-After) instead of hammering the token server.
5. `on_change` is called, synchronously, whenever the held token or the last error changes (a fetch
   succeeded or failed, the token was invalidated), so readiness can follow as events instead of polls.
   The one change that happens with time alone, the token turning unusable, is at `usable_until`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import math
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Protocol

from proxy.credentials import schedule
from proxy.errors import NoCredential, TokenError

log = logging.getLogger("serving_sidecar")


@dataclass(frozen=True)
class Token:
    access_token: str
    obtained_at: float  # wall-clock seconds
    expires_at: float

    def __repr__(self) -> str:
        return f"Token(<redacted>, expires_at={self.expires_at:.0f})"


@dataclass(frozen=True)
class FetchOutcome:
    """What an observer (metrics, logs) learns about one fetch. Holds no token."""

    kind: str
    label: str
    ok: bool
    expires_at: float | None
    error: str | None


Fetch = Callable[[], Awaitable[Token]]
Observer = Callable[[FetchOutcome], None]
TokenHook = Callable[[Token], None]  # a new token was obtained (e.g. to hand it to worker processes)


class CachedToken(Protocol):
    """What callers of one credential use: a `RefreshingToken`, or a worker's copy of its parent's."""

    def peek(self) -> str | None:
        """The cached token while it is usable, else None: never waits."""

    async def get(self) -> str:
        """A usable token, fetched if need be; NoCredential when none can be had now."""

    def invalidate(self, access_token: str) -> None:
        """The upstream rejected `access_token`: forget it if it is still the current one."""


class TokenSources(Protocol):
    """The credential for an invocation URL (see `Credentials.for_target`)."""

    def for_target(self, url: str, authorization_details: str | None, *, label: str) -> CachedToken: ...


def _ignore(_: FetchOutcome) -> None:
    return None


def _nothing() -> None:
    return None


class RefreshingToken:
    def __init__(
        self,
        fetch: Fetch,
        *,
        kind: str,
        label: str = "",
        clock: Callable[[], float] = time.time,
        observer: Observer | None = None,
        on_change: Callable[[], object] = _nothing,
        on_token: TokenHook | None = None,
    ) -> None:
        self._fetch = fetch
        self._on_change = on_change
        self._on_token = on_token
        self.kind = kind
        self.label = label
        self._clock = clock
        self._observer = observer or _ignore
        self._token: Token | None = None
        self._inflight: asyncio.Task[Token] | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._failures = 0
        self._retry_at = 0.0
        self._wake = asyncio.Event()
        self._forced = False
        self.last_error: TokenError | None = None

    def __repr__(self) -> str:
        state = "usable" if self.is_usable() else "unusable"
        return (
            f"RefreshingToken(kind={self.kind!r}, label={self.label!r}, {state}, "
            f"failures={self._failures}, inflight={self._inflight is not None})"
        )

    @property
    def expires_at(self) -> float | None:
        return None if self._token is None else self._token.expires_at

    @property
    def usable_until(self) -> float | None:
        """Wall-clock time at which the held token stops being usable (None without a token)."""
        return None if self._token is None else self._token.expires_at - schedule.UNUSABLE_MARGIN

    def is_usable(self) -> bool:
        return self._token is not None and schedule.is_usable(self._clock(), self._token.expires_at)

    def peek(self) -> str | None:
        """The cached token while it is usable, else None: never waits (the fast path)."""
        token = self._token
        if token is not None and schedule.is_usable(self._clock(), token.expires_at):
            return token.access_token
        return None

    async def get(self) -> str:
        """A usable access token; raises NoCredential when none can be had now."""
        token = self._token
        now = self._clock()
        if token is not None and schedule.is_usable(now, token.expires_at):
            return token.access_token
        if self.last_error is not None and now < self._retry_at and self._inflight is None:
            raise self._no_credential(now)
        try:
            return (await self._refresh()).access_token
        except TokenError:
            raise self._no_credential(self._clock()) from None

    def invalidate(self, access_token: str) -> None:
        """Forget `access_token` if it is still the current one (the upstream rejected it)."""
        if self._token is not None and self._token.access_token == access_token:
            self._token = None
            self._retry_at = 0.0
            self._on_change()

    def retry_now(self) -> bool:
        """Cut a failure backoff short (e.g. the secret file changed): the loop fetches again at once.

        True when there was a failure to retry.
        """
        if self.last_error is None:
            return False
        self._retry_at = 0.0
        self._wake.set()
        return True

    def refresh_now(self) -> None:
        """Fetch a new token at once even if the current one is fine (SIGHUP: try the re-read secret now).

        A failure keeps the current token, as any failed refresh does (invariant 3).
        """
        self._retry_at = 0.0
        self._forced = True
        self._wake.set()

    def start(self) -> None:
        """Start the background refresh loop (fetches at once when there is no token)."""
        if self._loop_task is None:
            # A fresh context: the refresh loop outlives the request that created it, and must not log
            # that request's id (contextvars are copied into new tasks).
            self._loop_task = asyncio.get_running_loop().create_task(self._run(), context=contextvars.Context())

    async def stop_refreshing(self) -> None:
        """Stop the background loop; a fetch in flight finishes for whoever waits on it (bounded by its timeout)."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None

    async def close(self) -> None:
        for task in (self._loop_task, self._inflight):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, TokenError):
                    await task
        self._loop_task = self._inflight = None

    def next_refresh_delay(self) -> float:
        """Seconds until the background loop should fetch again."""
        now = self._clock()
        if self.last_error is not None:
            return max(0.0, self._retry_at - now)
        if self._token is None:
            return 0.0
        return max(0.0, schedule.refresh_at(self._token.obtained_at, self._token.expires_at) - now)

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.next_refresh_delay()):
                    await self._wake.wait()
            self._wake.clear()
            forced, self._forced = self._forced, False
            if not forced and self._token is not None and self.last_error is None and self.next_refresh_delay() > 0:
                continue  # someone else refreshed meanwhile
            with contextlib.suppress(TokenError):
                await self._refresh()

    async def _refresh(self) -> Token:
        if self._inflight is None:
            self._inflight = asyncio.get_running_loop().create_task(self._fetch_once())
        return await asyncio.shield(self._inflight)

    async def _fetch_once(self) -> Token:
        try:
            token = await self._fetch()
        except TokenError as exc:
            self._record_failure(exc)
            raise
        except Exception as exc:
            # A bug or an unexpected library error: logged, then counted and backed off like any failure,
            # so the refresh loop lives on and callers get a 503, not a traceback.
            log.exception("%s token fetch failed unexpectedly", self.kind)
            error = TokenError("internal_error", f"unexpected {type(exc).__name__} while fetching a token")
            self._record_failure(error)
            raise error from exc
        finally:
            self._inflight = None
        if self._failures:
            log.info("%s obtained after %d failed attempt(s)", self._name(), self._failures)
        self._token, self._failures, self.last_error = token, 0, None
        self._observer(FetchOutcome(self.kind, self.label, True, token.expires_at, None))
        if self._on_token is not None:
            self._on_token(token)
        self._on_change()
        return token

    def _record_failure(self, exc: TokenError) -> None:
        self._failures += 1
        self.last_error = exc
        now = self._clock()
        self._retry_at = now + schedule.backoff(self._failures, configuration_error=exc.is_configuration_error)
        if self._token is not None and schedule.is_usable(now, self._token.expires_at):
            # Invariant 3 of `schedule`: never back off past the moment the current token stops being
            # usable, or callers get 503 inside the backoff although the token server is back.
            self._retry_at = min(self._retry_at, self._token.expires_at - schedule.UNUSABLE_MARGIN)
        # The error's texts were cut and redacted where they were received (oauth.parse_token_response).
        log.warning(
            "%s fetch failed (%d in a row), next try in %.1f s: %s",
            self._name(),
            self._failures,
            max(0.0, self._retry_at - now),
            exc,
        )
        self._observer(FetchOutcome(self.kind, self.label, False, self.expires_at, exc.error))
        self._on_change()

    def _name(self) -> str:
        return f"{self.kind} token" + (f" for {self.label}" if self.label else "")

    def _no_credential(self, now: float) -> NoCredential:
        error = self.last_error
        reason = f"{error.error}: {error.description}" if error and error.description else str(error)
        hint = " (check the client id and secret)" if error and error.is_configuration_error else ""
        retry_after = max(1, math.ceil(self._retry_at - now))
        return NoCredential(f"no usable {self.kind} token: token server said {reason}{hint}", retry_after=retry_after)


class TokenCache:
    """RefreshingTokens by key, e.g. (invocation URL, authorization details) for data-plane tokens."""

    def __init__(self) -> None:
        self._entries: dict[Hashable, RefreshingToken] = {}

    def __repr__(self) -> str:
        return f"TokenCache(entries={len(self._entries)})"

    def get(self, key: Hashable) -> RefreshingToken | None:
        return self._entries.get(key)

    def get_or_create(self, key: Hashable, create: Callable[[], RefreshingToken]) -> RefreshingToken:
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = create()
            entry.start()
        return entry

    def retry_now(self) -> int:
        """Cut every failure backoff short (see `RefreshingToken.retry_now`); the number of tokens retried."""
        return sum(entry.retry_now() for entry in list(self._entries.values()))

    async def discard(self, key: Hashable) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            await entry.stop_refreshing()  # requests already waiting on its fetch still get their answer

    async def close(self) -> None:
        entries, self._entries = list(self._entries.values()), {}
        for entry in entries:
            await entry.close()
