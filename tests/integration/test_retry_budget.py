"""Recovery without amplification: the default policy absorbs a short burst, a shared retry budget keeps a
sustained throttle from being multiplied, and answers tell clients what not to retry (over HTTP)."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from proxy.app import Sidecar
from proxy.emulator import Emulator
from tests.integration.conftest import SidecarFactory
from tests.integration.test_faults import call, statuses


def retried(sidecar: Sidecar) -> float:
    registry = sidecar.metrics.registry
    return sum(
        registry.get_sample_value("serving_sidecar_retries_total", {"endpoint": "fraud-ro", "reason": reason}) or 0.0
        for reason in ("throttled", "unavailable")
    )


async def test_the_default_policy_absorbs_a_short_burst(
    emu: Emulator, sidecar: Sidecar, client: aiohttp.ClientSession
) -> None:
    emu.fail_next(2, 429, retry_after=1, endpoint="fraud-ro")
    emu.fail_next(2, 503, endpoint="fraud-ro")
    for _ in range(3):
        started = time.monotonic()
        status, headers, body = await call(client, sidecar)
        assert status == 200, body
        assert time.monotonic() - started < 5.0  # two 1 s waits and two short backoffs (at most 0.4 + 0.8 s)
        assert "x-should-retry" not in headers
    assert statuses(emu) == {"429": 2, "503": 2, "200": 3}


@pytest.mark.slow
async def test_a_sustained_throttle_is_not_multiplied(
    emu: Emulator, sidecar: Sidecar, client: aiohttp.ClientSession
) -> None:
    """30 s of 429s for 10 concurrent callers: the endpoint sees at most ~1.2x their calls, plus the floor."""
    assert (await call(client, sidecar))[0] == 200
    emu.fail_next(1_000_000, 429, endpoint="fraud-ro")
    calls, advised = 0, 0
    deadline = time.monotonic() + 30.0

    async def caller() -> None:
        nonlocal calls, advised
        for _ in range(1000):  # bounded, whatever the clock does
            if time.monotonic() >= deadline:
                return
            status, headers, _ = await call(client, sidecar)
            assert status == 429
            calls += 1
            advised += headers.get("x-should-retry") == "false"
            await asyncio.sleep(0.1)

    started = time.monotonic()
    await asyncio.gather(*(caller() for _ in range(10)))
    seconds = time.monotonic() - started
    upstream = statuses(emu)["429"]
    ratio, floor, window = sidecar.settings.retry_ratio, sidecar.settings.min_retries_per_second, 10.0
    # Any 10 s window holds at most ratio x its requests + floor x 10 s of retries. The run spans at most
    # seconds / window + 2 windows, and the last may count one window's requests again.
    allowed = calls * (1 + ratio) + ratio * calls * window / seconds + floor * window * (seconds / window + 2)
    assert calls <= upstream <= allowed, (calls, upstream, allowed)
    assert upstream - calls == retried(sidecar)
    assert upstream > calls * (1 + ratio / 2)  # the budget is used, not just refused (without it: 5x calls)
    assert advised == calls  # every answer was retried or refused a retry: clients must not retry it


async def test_when_the_budget_is_spent_the_429_comes_back_at_once_and_is_not_to_be_retried(
    emu: Emulator, make_sidecar: SidecarFactory, client: aiohttp.ClientSession
) -> None:
    async with make_sidecar(retry_ratio=0.0, min_retries_per_second=0.0) as sidecar:
        emu.fail_next(3, 429, retry_after=1, endpoint="fraud-ro")
        status, headers, _ = await call(client, sidecar)
    assert status == 429 and headers["x-should-retry"] == "false" and headers["Retry-After"] == "1"
    assert statuses(emu) == {"429": 1}


# --- advice to clients ------------------------------------------------------------------------------------


async def test_what_the_sidecar_retried_is_not_to_be_retried(
    emu: Emulator, sidecar: Sidecar, client: aiohttp.ClientSession
) -> None:
    emu.fail_next(5, 503, endpoint="fraud-ro")
    status, headers, _ = await call(client, sidecar)
    assert (status, headers["x-should-retry"]) == (503, "false")
    assert statuses(emu) == {"503": 5}


async def test_a_first_hand_429_keeps_the_client_free_to_retry_after_its_retry_after(
    emu: Emulator, sidecar: Sidecar, client: aiohttp.ClientSession
) -> None:
    emu.fail_next(1, 429, retry_after=60, endpoint="fraud-ro")  # longer than --retry-budget: not retried
    status, headers, _ = await call(client, sidecar)
    assert (status, headers["Retry-After"]) == (429, "60")
    assert "x-should-retry" not in headers


@pytest.mark.parametrize("failure", [500, 502, 504])
async def test_what_may_have_run_is_not_to_be_retried(
    emu: Emulator, sidecar: Sidecar, client: aiohttp.ClientSession, failure: int
) -> None:
    emu.fail_next(1, failure, endpoint="fraud-ro")
    status, headers, _ = await call(client, sidecar)
    assert (status, headers["x-should-retry"]) == (failure, "false")


async def test_a_timeout_may_have_run_and_is_not_to_be_retried(
    emu: Emulator, make_sidecar: SidecarFactory, client: aiohttp.ClientSession
) -> None:
    async with make_sidecar(first_byte_timeout=0.5) as sidecar:
        emu.faults.latency["fraud-ro"] = 2.0
        status, headers, body = await call(client, sidecar)
    assert (status, headers["x-should-retry"]) == (504, "false"), body


async def test_the_sidecars_own_temporary_refusals_say_when_to_come_back(
    emu: Emulator, make_sidecar: SidecarFactory, client: aiohttp.ClientSession
) -> None:
    emu.faults.token_outage = True
    async with make_sidecar(wait_ready=False) as sidecar:
        status, headers, _ = await call(client, sidecar)
        assert status == 503 and int(headers["Retry-After"]) >= 1
        assert "x-should-retry" not in headers
        emu.faults.token_outage = False
        assert await sidecar.wait_ready(30)
        emu.faults.metadata_failures = {"features-ro": 503}
        status, headers, _ = await call(client, sidecar, "/serving-endpoints/features-ro/invocations")
        assert status == 502 and headers["Retry-After"] == "5" and "x-should-retry" not in headers


async def test_successes_carry_no_advice(sidecar: Sidecar, client: aiohttp.ClientSession) -> None:
    status, headers, _ = await call(client, sidecar)
    assert status == 200 and "x-should-retry" not in headers
