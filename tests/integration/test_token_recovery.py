"""Recovery from configuration errors without a restart: `invalid_client` backs off to at most 30 s,
so a principal an admin fixes is picked up within 30 s; a changed secret file is tried at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

from proxy.app import Sidecar
from proxy.emulator import Emulator

from .conftest import SidecarFactory, url

WRONG = "secret-the-workspace-does-not-know-yet"


async def readyz_status(client: aiohttp.ClientSession, sidecar: Sidecar) -> int:
    async with client.get(url(sidecar, "/readyz", "admin")) as resp:
        return resp.status


async def wait_for(check: Callable[[], Awaitable[bool]], limit: float) -> float:
    """Seconds until `check()` holds; fails after `limit`."""
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < limit, f"not within {limit} s"
        await asyncio.sleep(0.1)
    return time.monotonic() - started


def invalid_client_failures(emu: Emulator) -> int:
    return int(emu.counters.snapshot()["token_failures"].get("invalid_client", 0))


async def test_a_principal_fixed_by_an_admin_is_picked_up_within_30_s(
    emu: Emulator, make_sidecar: SidecarFactory, client: aiohttp.ClientSession
) -> None:
    async with make_sidecar(wait_ready=False, client_secret=WRONG) as sidecar:

        async def failed_once() -> bool:
            return invalid_client_failures(emu) >= 1

        await wait_for(failed_once, 15)
        await asyncio.sleep(5)  # the admin takes a while to fix the principal
        assert await readyz_status(client, sidecar) == 503
        emu.set_client_secret(emu.client_id, WRONG)  # from now on the configured secret is right

        async def ready() -> bool:
            return await readyz_status(client, sidecar) == 200

        took = await wait_for(ready, 30)  # was up to 300 s (5 minutes) before
        assert took <= 30
        async with client.post(url(sidecar, "/serving-endpoints/fraud-ro/invocations"), json={"inputs": [1]}) as r:
            assert r.status == 200
        # Not a hot loop either: a few tries in all, spaced 5, 10, 20 s.
        assert invalid_client_failures(emu) <= 4


async def test_a_changed_secret_file_is_tried_at_once(
    emu: Emulator, make_sidecar: SidecarFactory, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    secret_file = tmp_path / "client-secret"
    secret_file.write_text(WRONG + "\n")
    async with make_sidecar(wait_ready=False, client_secret_file=str(secret_file)) as sidecar:

        async def failed_twice() -> bool:
            return invalid_client_failures(emu) >= 2

        await wait_for(failed_twice, 20)  # the next try is 10 s (+-10%) away from now
        secret_file.write_text(emu.client_secret + "\n")  # a rotated Secret mount

        async def ready() -> bool:
            return await readyz_status(client, sidecar) == 200

        assert await wait_for(ready, 8.5) < 8.5  # the file watcher (2 s) retries at once, before the backoff
