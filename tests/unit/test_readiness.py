"""Readiness as events: subscribers follow every flip, whoever asks; a timer covers a token expiring."""

from __future__ import annotations

import asyncio
import time

from proxy.readiness import Health, Readiness


class State:
    def __init__(self) -> None:
        self.listening = True
        self.credential_ok = False
        self.draining = False
        self.usable_until: float | None = None

    def health(self) -> Health:
        ok = self.credential_ok and (self.usable_until is None or time.time() < self.usable_until)
        return Health(started=True, listening=self.listening, credential_ok=ok, draining=self.draining)


def test_subscribers_run_on_flips_only_whoever_asks() -> None:
    state = State()
    readiness = Readiness(state.health)
    seen: list[bool] = []
    readiness.subscribe(lambda health: seen.append(health.ready))
    assert not readiness.current().ready
    assert not readiness.current().ready
    state.credential_ok = True
    assert readiness.current().ready  # the ask itself notifies first: nobody can see a stale answer
    state.draining = True
    readiness.current()
    assert seen == [False, True, False]


def test_a_failing_subscriber_does_not_stop_the_others() -> None:
    state = State()
    readiness = Readiness(state.health)
    seen: list[bool] = []

    def broken(_: Health) -> None:
        raise RuntimeError("subscriber bug")

    readiness.subscribe(broken)
    readiness.subscribe(lambda health: seen.append(health.ready))
    readiness.current()
    assert seen == [False]


async def test_a_token_turning_unusable_flips_readiness_without_anyone_asking() -> None:
    state = State()
    state.credential_ok, state.usable_until = True, time.time() + 0.2
    readiness = Readiness(state.health, usable_until=lambda: state.usable_until)
    flipped = asyncio.Event()
    readiness.subscribe(lambda health: None if health.ready else flipped.set())
    assert readiness.current().ready
    assert "timer=True" in repr(readiness)
    await asyncio.wait_for(flipped.wait(), 10)
    assert not readiness.current().ready
    readiness.close()


async def test_the_timer_is_armed_only_while_ready() -> None:
    state = State()
    state.usable_until = time.time() + 100
    readiness = Readiness(state.health, usable_until=lambda: state.usable_until)
    readiness.current()
    assert "timer=False" in repr(readiness)
    state.credential_ok = True
    readiness.current()
    assert "timer=True" in repr(readiness)
    state.draining = True
    readiness.current()
    assert "timer=False" in repr(readiness)


def test_reasons() -> None:
    assert Health(True, True, True, True).reason() == "draining"
    assert Health(True, False, True, False).reason() == "listeners are not up"
    assert Health(True, True, False, False, "invalid_client: x").reason().endswith("invalid_client: x")
    assert Health(True, True, True, False).reason() == "ready"
