"""SIGTERM/SIGINT on the real process: readiness 503 at once, in-flight calls finish, exit code 0."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time

import aiohttp

from proxy.emulator import Emulator
from tests.e2e.conftest import Launch, SidecarProcess

RECORDS = {"dataframe_records": [{"a": 1}]}
SLOW = 2.0  # seconds the emulator holds each fraud-ro call
DRAIN_DELAY = 0.5
DRAIN_TIMEOUT = 10.0


async def in_flight(session: aiohttp.ClientSession, sidecar: SidecarProcess) -> float:
    async with session.get(sidecar.url("/metrics", "admin")) as resp:
        text = await resp.text()
    for line in text.splitlines():
        if line.startswith('serving_sidecar_in_flight_requests{front="http"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def start_slow_call(session: aiohttp.ClientSession, sidecar: SidecarProcess) -> asyncio.Task[tuple[int, bytes]]:
    async def call() -> tuple[int, bytes]:
        async with session.post(sidecar.url("/serving-endpoints/fraud-ro/invocations"), json=RECORDS) as resp:
            return resp.status, await resp.read()

    task = asyncio.create_task(call())
    deadline = time.monotonic() + 5
    while await in_flight(session, sidecar) < 1:
        assert time.monotonic() < deadline, "the slow call never reached the sidecar"
        await asyncio.sleep(0.02)
    return task


async def test_sigterm_drains_in_flight_calls_and_exits_zero(emu: Emulator, launch: Launch) -> None:
    emu.faults.latency["fraud-ro"] = SLOW
    sidecar = await launch(
        "--endpoint", "fraud-ro", "--drain-delay", str(DRAIN_DELAY), "--drain-timeout", str(DRAIN_TIMEOUT)
    )
    async with aiohttp.ClientSession() as session:
        slow = await start_slow_call(session, sidecar)
        signalled = time.monotonic()
        sidecar.signal(signal.SIGTERM)
        ready_status = 200
        while ready_status == 200 and time.monotonic() - signalled < DRAIN_DELAY:
            async with session.get(sidecar.url("/readyz", "admin")) as resp:
                ready_status = resp.status
            await asyncio.sleep(0.02)
        assert ready_status == 503, "readiness did not turn 503 within the drain delay"
        status, body = await asyncio.wait_for(slow, SLOW + DRAIN_TIMEOUT)
        assert (status, body) == (200, b'{"predictions":[1]}')
    code = await sidecar.wait(DRAIN_DELAY + DRAIN_TIMEOUT + 5)
    assert code == 0, sidecar.log()
    assert time.monotonic() - signalled < DRAIN_DELAY + DRAIN_TIMEOUT
    log = sidecar.log()
    assert "SIGTERM: draining" in log and "stopped" in log


async def test_sigint_drains_too(launch: Launch) -> None:
    sidecar = await launch("--drain-delay", "0", "--drain-timeout", "5")
    sidecar.signal(signal.SIGINT)
    assert await sidecar.wait(10) == 0, sidecar.log()


async def test_a_second_signal_exits_at_once(emu: Emulator, launch: Launch) -> None:
    emu.faults.latency["fraud-ro"] = 30
    sidecar = await launch("--endpoint", "fraud-ro", "--drain-delay", "0", "--drain-timeout", "60")
    async with aiohttp.ClientSession() as session:
        slow = await start_slow_call(session, sidecar)
        sidecar.signal(signal.SIGTERM)
        await asyncio.sleep(0.3)  # listeners closed; the 30 s call would hold the drain for up to 60 s
        started = time.monotonic()
        sidecar.signal(signal.SIGTERM)
        code = await sidecar.wait(5)
        with contextlib.suppress(aiohttp.ClientError):
            await asyncio.wait_for(slow, 5)  # cut: the process is gone
    assert code == 128 + signal.SIGTERM, sidecar.log()
    assert time.monotonic() - started < 5
    assert "second SIGTERM: exiting at once" in sidecar.log()
