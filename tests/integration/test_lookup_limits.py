"""Lookups cannot be used as an amplifier against the workspace API: new names are rate-limited, failed
lookups are remembered briefly, and --only-configured-endpoints makes no lookup at all for other names."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from proxy.app import Sidecar
from proxy.emulator import Emulator
from proxy.endpoints import FAILURE_TTL, NEW_NAME_LOOKUPS_BURST, NEW_NAME_LOOKUPS_PER_SECOND
from tests.integration.conftest import SidecarFactory, url

RECORDS = {"dataframe_records": [{"a": 1, "b": 2}]}


async def call(client: aiohttp.ClientSession, sidecar: Sidecar, name: str) -> tuple[int, dict[str, str], bytes]:
    async with client.post(url(sidecar, f"/serving-endpoints/{name}/invocations"), json=RECORDS) as resp:
        return resp.status, dict(resp.headers), await resp.read()


def reads(emu: Emulator, name: str | None = None) -> int:
    counted = emu.counters.snapshot()["metadata_reads"]
    return int(sum(counted.values()) if name is None else counted.get(name, 0))


async def test_5000_unknown_names_make_a_bounded_number_of_lookups(
    emu: Emulator, sidecar: Sidecar, client: aiohttp.ClientSession
) -> None:
    assert (await call(client, sidecar, "fraud-ro"))[0] == 200  # a known name, resolved before the flood
    before = reads(emu)
    started = time.monotonic()
    seen: dict[int, int] = {}
    throttled: list[dict[str, str]] = []

    async def caller(first: int) -> None:
        for i in range(first, 5000, 50):
            status, headers, body = await call(client, sidecar, f"made-up-{i}")
            seen[status] = seen.get(status, 0) + 1
            if status == 429:
                assert b"REQUEST_LIMIT_EXCEEDED" in body and b"too many lookups" in body
                throttled.append(headers)

    await asyncio.gather(*(caller(first) for first in range(50)))
    elapsed = time.monotonic() - started
    lookups = reads(emu) - before
    assert set(seen) <= {404, 429} and sum(seen.values()) == 5000
    assert lookups <= NEW_NAME_LOOKUPS_BURST + NEW_NAME_LOOKUPS_PER_SECOND * elapsed + 1, (lookups, elapsed)
    assert seen[429] >= 5000 - lookups
    assert all(int(headers["Retry-After"]) >= 1 for headers in throttled)
    assert (await call(client, sidecar, "fraud-ro"))[0] == 200  # known names are not held back


async def test_workspace_429_and_5xx_answers_are_remembered_briefly(
    emu: Emulator, sidecar: Sidecar, client: aiohttp.ClientSession
) -> None:
    emu.faults.metadata_failures = {"fraud-ro": 429, "features-ro": 500}
    started = time.monotonic()
    for _ in range(25):
        for name in ("fraud-ro", "features-ro"):
            status, headers, body = await call(client, sidecar, name)
            assert status == 502 and b"workspace API answered HTTP" in body
            assert headers["Retry-After"] == str(int(FAILURE_TTL))
    elapsed = time.monotonic() - started
    for name in ("fraud-ro", "features-ro"):
        assert reads(emu, name) <= 1 + elapsed / FAILURE_TTL, (reads(emu, name), elapsed)
    emu.faults.metadata_failures = {}
    await asyncio.sleep(FAILURE_TTL)
    assert (await call(client, sidecar, "fraud-ro"))[0] == 200


async def test_only_configured_endpoints_answers_404_without_a_lookup(
    emu: Emulator, make_sidecar: SidecarFactory, client: aiohttp.ClientSession
) -> None:
    async with make_sidecar(endpoint=["fraud-ro"], only_configured_endpoints=True) as sidecar:
        assert (await call(client, sidecar, "fraud-ro"))[0] == 200
        for name in ("features-ro", "plain-model", "no-such-thing"):
            status, _, body = await call(client, sidecar, name)
            assert status == 404 and b"RESOURCE_DOES_NOT_EXIST" in body and b"--only-configured-endpoints" in body
    assert emu.counters.snapshot()["metadata_reads"] == {"fraud-ro": 1}
