import asyncio

import pytest

from proxy.credentials.cache import FetchOutcome, RefreshingToken, Token, TokenCache
from proxy.errors import NoCredential, TokenError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeTokenServer:
    """Hands out numbered tokens with a TTL; can be told to fail or to hold each fetch until released."""

    def __init__(self, clock: Clock, ttl: float = 600) -> None:
        self.clock = clock
        self.ttl = ttl
        self.fetches = 0
        self.error: TokenError | None = None
        self.gate: asyncio.Event | None = None

    async def fetch(self) -> Token:
        self.fetches += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        now = self.clock()
        return Token(f"tok-{self.fetches}", now, now + self.ttl)


def make(server: FakeTokenServer, clock: Clock, seen: list[FetchOutcome] | None = None) -> RefreshingToken:
    observer = (seen.append) if seen is not None else (lambda _o: None)
    return RefreshingToken(server.fetch, kind="workspace", clock=clock, observer=observer)


async def test_cached_token_is_reused_without_fetching() -> None:
    clock = Clock()
    server = FakeTokenServer(clock)
    token = make(server, clock)
    assert await token.get() == "tok-1"
    clock.now += 500
    assert await token.get() == "tok-1"
    assert server.fetches == 1


async def test_concurrent_callers_share_one_fetch() -> None:
    clock = Clock()
    server = FakeTokenServer(clock)
    server.gate = asyncio.Event()
    token = make(server, clock)
    waiters = [asyncio.create_task(token.get()) for _ in range(20)]
    await asyncio.sleep(0)
    server.gate.set()
    assert set(await asyncio.gather(*waiters)) == {"tok-1"}
    assert server.fetches == 1


async def test_token_inside_the_unusable_margin_is_replaced() -> None:
    clock = Clock()
    server = FakeTokenServer(clock, ttl=100)
    token = make(server, clock)
    await token.get()
    clock.now += 61  # 39 s left
    assert await token.get() == "tok-2"


async def test_failure_gives_503_naming_the_oauth_error_and_backs_off() -> None:
    clock = Clock()
    server = FakeTokenServer(clock)
    server.error = TokenError("invalid_client", "Client authentication failed", status=401)
    seen: list[FetchOutcome] = []
    token = make(server, clock, seen)
    with pytest.raises(NoCredential) as first:
        await token.get()
    assert "invalid_client" in first.value.message
    assert first.value.retry_after is not None and first.value.retry_after >= 1
    with pytest.raises(NoCredential):
        await token.get()
    assert server.fetches == 1  # inside the backoff: no second hit on the token server
    assert [o.ok for o in seen] == [False]
    assert seen[0].error == "invalid_client"


async def test_failed_refresh_keeps_serving_the_valid_token() -> None:
    clock = Clock()
    server = FakeTokenServer(clock, ttl=600)
    token = make(server, clock)
    await token.get()
    server.error = TokenError("temporarily_unavailable", "outage", status=503)
    clock.now += 400  # past the refresh point, token still usable
    with pytest.raises(TokenError):
        await token._refresh()
    assert await token.get() == "tok-1"
    assert token.next_refresh_delay() > 0  # retry scheduled after a backoff, not at once


async def test_invalidate_forces_a_new_token_only_for_the_rejected_one() -> None:
    clock = Clock()
    server = FakeTokenServer(clock)
    token = make(server, clock)
    await token.get()
    token.invalidate("some-other-token")
    assert await token.get() == "tok-1"
    token.invalidate("tok-1")
    assert await token.get() == "tok-2"


async def test_background_loop_refreshes_ahead_of_expiry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("proxy.credentials.schedule.MIN_REFRESH_INTERVAL", 0.1)
    server = FakeTokenServer(Clock(), ttl=50)
    server.clock = __import__("time").time  # real time: the loop really sleeps
    token = RefreshingToken(server.fetch, kind="workspace")
    # a 50 s token is due at once (lead is 55 s): the loop fetches again after the minimum interval
    token.start()
    try:
        for _ in range(100):
            if server.fetches >= 2:
                break
            await asyncio.sleep(0.05)
    finally:
        await token.close()
    assert server.fetches >= 2
    assert "RefreshingToken(kind='workspace'" in repr(token)


async def test_retry_after_a_failed_refresh_comes_before_the_token_becomes_unusable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A 60 s token is due for refresh after 5 s and usable for 20 s. During an outage of the token server,
    # backoff alone (1, 2, 4, 8 s, +10% jitter here) would put the fifth try past 20 s: callers would get
    # 503 inside the backoff even if the server came back at 17 s. The tries stop at the usable end.
    monkeypatch.setattr("proxy.credentials.schedule.random.uniform", lambda _low, high: high)
    clock = Clock()
    server = FakeTokenServer(clock, ttl=60)
    token = make(server, clock)
    assert await token.get() == "tok-1"
    usable_until = clock.now + 60 - 40
    clock.now += 5
    server.error = TokenError("temporarily_unavailable", "outage", status=503)
    while clock.now < usable_until:
        with pytest.raises(TokenError):
            await token._refresh()
        clock.now += token.next_refresh_delay()
        assert clock.now <= usable_until
    server.error = None
    assert clock.now == usable_until
    assert await token.get() == "tok-6"  # fetched now, not refused inside a backoff


async def test_short_tokens_are_not_refetched_in_a_loop() -> None:
    clock = Clock()
    server = FakeTokenServer(clock, ttl=30)  # never usable by the rules
    token = make(server, clock)
    await token._refresh()
    assert token.next_refresh_delay() == pytest.approx(5.0)


async def test_an_unexpected_error_is_a_token_error_and_backed_off() -> None:
    clock = Clock()

    async def broken() -> Token:
        raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")

    token = RefreshingToken(broken, kind="workspace", clock=clock)
    with pytest.raises(NoCredential, match="internal_error"):
        await token.get()
    assert token.last_error is not None and token.next_refresh_delay() > 0


async def test_discarding_an_entry_does_not_cancel_its_waiters() -> None:
    clock = Clock()
    server = FakeTokenServer(clock)
    server.gate = asyncio.Event()
    cache = TokenCache()
    entry = cache.get_or_create("k", lambda: make(server, clock))
    waiter = asyncio.create_task(entry.get())
    await asyncio.sleep(0.01)
    await cache.discard("k")
    server.gate.set()
    assert await waiter == "tok-1"


async def test_on_change_follows_fetches_failures_and_invalidation() -> None:
    clock = Clock()
    server = FakeTokenServer(clock)
    changes: list[bool] = []
    token = RefreshingToken(server.fetch, kind="workspace", clock=clock, on_change=lambda: changes.append(True))
    await token.get()
    assert len(changes) == 1 and token.usable_until == clock.now + 600 - 40
    token.invalidate("tok-1")
    assert len(changes) == 2 and token.usable_until is None
    server.error = TokenError("temporarily_unavailable", "outage")
    with pytest.raises(NoCredential):
        await token.get()
    assert len(changes) == 3


async def test_retry_now_ends_a_failure_backoff_and_says_whether_there_was_one() -> None:
    server = FakeTokenServer(Clock())
    server.clock = __import__("time").time
    token = RefreshingToken(server.fetch, kind="workspace")
    assert token.retry_now() is False
    server.error = TokenError("invalid_client", "wrong secret", status=401)
    token.start()
    try:
        for _ in range(200):
            if token.last_error is not None:
                break
            await asyncio.sleep(0.01)
        assert token.next_refresh_delay() >= 4  # a configuration error waits 5 s (+-10%, less time passed) ...
        server.error = None
        assert token.retry_now() is True  # ... unless told the secret changed
        for _ in range(200):
            if token.is_usable():
                break
            await asyncio.sleep(0.01)
        assert token.is_usable() and server.fetches == 2
    finally:
        await token.close()


async def test_refresh_now_fetches_even_with_a_good_token_and_keeps_it_on_failure() -> None:
    server = FakeTokenServer(Clock())
    server.clock = __import__("time").time
    token = RefreshingToken(server.fetch, kind="workspace")
    token.start()
    try:
        assert await token.get() == "tok-1"
        server.error = TokenError("invalid_client", "the new secret is wrong", status=401)
        token.refresh_now()
        for _ in range(200):
            if server.fetches == 2:
                break
            await asyncio.sleep(0.01)
        assert server.fetches == 2 and token.last_error is not None
        assert await token.get() == "tok-1"  # still usable: a failed refresh keeps it
    finally:
        await token.close()


async def test_the_cache_retries_only_its_failed_entries() -> None:
    clock = Clock()
    good, bad = FakeTokenServer(clock), FakeTokenServer(clock)
    bad.error = TokenError("invalid_authorization_details", "no such endpoint")
    cache = TokenCache()
    entries = [cache.get_or_create(name, lambda s=s: make(s, clock)) for name, s in (("g", good), ("b", bad))]
    try:
        await entries[0].get()
        with pytest.raises(NoCredential):
            await entries[1].get()
        assert cache.retry_now() == 1
    finally:
        await cache.close()
