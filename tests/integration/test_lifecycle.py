"""Operations in-process: request ids, the access log, probes and the drain sequence."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from collections.abc import Callable, Iterator

import aiohttp
import pytest

from proxy import logs
from proxy.app import Sidecar
from proxy.emulator import Emulator
from tests.integration.conftest import SidecarFactory, url

RECORDS = {"dataframe_records": [{"a": 1}]}
INVOKE = "/serving-endpoints/{}/invocations"


@pytest.fixture
def access_lines() -> Iterator[io.StringIO]:
    """Access-log lines (JSON) written while the test runs."""
    stream = io.StringIO()
    access = logging.getLogger(logs.ACCESS_LOGGER)
    handler = logs.build_handler("json", stream=stream)
    previous = access.level
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    yield stream
    access.removeHandler(handler)
    access.setLevel(previous)


async def status_of(client: aiohttp.ClientSession, target: str) -> int:
    async with client.get(target) as resp:
        return resp.status


async def test_request_id_is_honoured_generated_and_logged(
    make_sidecar: SidecarFactory, client: aiohttp.ClientSession, access_lines: io.StringIO
) -> None:
    async with make_sidecar(access_log=True) as sidecar:
        target = url(sidecar, INVOKE.format("fraud-ro"))
        async with client.post(target, json=RECORDS, headers={"X-Request-Id": "caller-id-1"}) as resp:
            assert resp.status == 200
            assert resp.headers["X-Request-Id"] == "caller-id-1"
        async with client.post(target, json=RECORDS, headers={"X-Request-Id": "bad id\twith tab"}) as resp:
            generated = resp.headers["X-Request-Id"]
            assert generated != "bad id\twith tab" and len(generated) == 32
        async with client.post(url(sidecar, INVOKE.format("nope")), json=RECORDS) as resp:
            assert resp.status == 404
            assert len(resp.headers["X-Request-Id"]) == 32  # errors the sidecar makes carry one too
    lines = [json.loads(line) for line in access_lines.getvalue().splitlines()]
    assert [line["request_id"] for line in lines[:2]] == ["caller-id-1", generated]
    assert lines[0]["message"].startswith("POST /serving-endpoints/fraud-ro/invocations 200 ")
    assert (lines[0]["front"], lines[0]["endpoint"], lines[0]["status"]) == ("http", "fraud-ro", 200)
    assert (lines[2]["endpoint"], lines[2]["status"]) == ("unresolved", 404)


async def test_access_log_is_off_by_default(
    sidecar: Sidecar, client: aiohttp.ClientSession, access_lines: io.StringIO
) -> None:
    async with client.post(url(sidecar, INVOKE.format("fraud-ro")), json=RECORDS) as resp:
        assert resp.status == 200
    assert access_lines.getvalue() == ""


async def test_startup_waits_for_a_credential_and_then_stays_up(
    emu: Emulator, make_sidecar: SidecarFactory, client: aiohttp.ClientSession
) -> None:
    emu.faults.token_outage = True
    async with make_sidecar(wait_ready=False) as sidecar:
        assert await status_of(client, url(sidecar, "/healthz", "admin")) == 200
        assert await status_of(client, url(sidecar, "/startupz", "admin")) == 503
        assert await status_of(client, url(sidecar, "/readyz", "admin")) == 503
        emu.faults.token_outage = False
        sidecar.credentials.workspace.retry_now()
        assert await sidecar.wait_ready(10), sidecar.health().reason()
        assert await status_of(client, url(sidecar, "/startupz", "admin")) == 200
        sidecar.begin_draining()
        assert await status_of(client, url(sidecar, "/readyz", "admin")) == 503
        assert await status_of(client, url(sidecar, "/startupz", "admin")) == 200  # latched: no restart


async def test_drain_keeps_serving_for_the_delay_then_finishes_in_flight_work(
    emu: Emulator, make_sidecar: SidecarFactory, client: aiohttp.ClientSession
) -> None:
    emu.faults.latency["fraud-ro"] = 1.5
    async with make_sidecar(drain_delay=0.5, drain_timeout=10) as sidecar:
        hooked: list[bool] = []
        sidecar.on_drain.append(lambda: hooked.append(sidecar.health().ready))
        slow = asyncio.create_task(client.post(url(sidecar, INVOKE.format("fraud-ro")), json=RECORDS))
        await _until(lambda: in_flight(sidecar) == 1)
        started = time.monotonic()
        drain = asyncio.create_task(sidecar.drain())
        await asyncio.sleep(0)
        assert hooked == [False]  # the hook ran at once, with readiness already off
        assert await status_of(client, url(sidecar, "/readyz", "admin")) == 503
        async with client.post(url(sidecar, INVOKE.format("features-ro")), json=RECORDS) as resp:
            assert resp.status == 200  # still accepted during the delay
        http_port = sidecar.port("http")
        await _until(lambda: time.monotonic() - started > 0.7)
        with pytest.raises(aiohttp.ClientConnectionError):
            async with aiohttp.ClientSession() as fresh:  # a new connection: the listener is closed
                await fresh.post(f"http://127.0.0.1:{http_port}{INVOKE.format('features-ro')}", json=RECORDS)
        resp = await slow
        assert resp.status == 200 and await resp.json() == {"predictions": [1]}
        resp.release()
        await asyncio.wait_for(drain, 10)
        assert time.monotonic() - started < 5


async def test_drain_timeout_cuts_requests_that_take_longer(
    emu: Emulator, make_sidecar: SidecarFactory, client: aiohttp.ClientSession
) -> None:
    emu.faults.latency["fraud-ro"] = 5
    async with make_sidecar(drain_delay=0, drain_timeout=0.5) as sidecar:
        slow = asyncio.create_task(client.post(url(sidecar, INVOKE.format("fraud-ro")), json=RECORDS))
        await _until(lambda: in_flight(sidecar) == 1)
        started = time.monotonic()
        await asyncio.wait_for(sidecar.drain(), 5)
        assert time.monotonic() - started < 3
        with pytest.raises(aiohttp.ClientError):
            await asyncio.wait_for(slow, 5)


async def test_the_whole_drain_is_bounded_by_delay_plus_timeout(
    emu: Emulator, make_sidecar: SidecarFactory, client: aiohttp.ClientSession
) -> None:
    """A unary call and a stream that outlive the drain are both cut at drain_delay + drain_timeout, once
    (the timeout is not spent twice, once per stage)."""
    emu.faults.latency["fraud-ro"] = 30
    emu.faults.latency["chat-ro"] = 30
    chat = {"messages": [{"role": "user", "content": "hello there"}], "stream": True}
    async with make_sidecar(drain_delay=0.5, drain_timeout=2) as sidecar:
        unary = asyncio.create_task(client.post(url(sidecar, INVOKE.format("fraud-ro")), json=RECORDS))
        stream = asyncio.create_task(client.post(url(sidecar, INVOKE.format("chat-ro")), json=chat))
        await _until(lambda: in_flight(sidecar) == 2)
        started = time.monotonic()
        await asyncio.wait_for(sidecar.drain(), 10)
        elapsed = time.monotonic() - started
        assert 2.5 <= elapsed < 3.5, elapsed  # 0.5 + 2, with room for a loaded machine; twice would be 4.5
        for call in (unary, stream):
            with pytest.raises(aiohttp.ClientError):
                await asyncio.wait_for(call, 5)


def in_flight(sidecar: Sidecar) -> float | None:
    return sidecar.metrics.registry.get_sample_value("serving_sidecar_in_flight_requests", {"front": "http"})


async def _until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    """Wait (bounded) until `condition()` is true."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)
