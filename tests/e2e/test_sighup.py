"""SIGHUP, to the sidecar as a subprocess: it never stops the process, re-reads the client secret file
(a token is fetched with the new secret at once) and ends a token failure backoff."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

from proxy.emulator import Emulator

from .conftest import Launch, SidecarProcess

LIMIT = 20.0


async def readyz(sidecar: SidecarProcess) -> int:
    async with aiohttp.ClientSession() as session, session.get(sidecar.url("/readyz", "admin")) as resp:
        return resp.status


async def eventually(check: Callable[[], Awaitable[bool]], limit: float = LIMIT) -> float:
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < limit, f"not within {limit} s"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


def grants(emu: Emulator) -> int:
    return int(emu.counters.snapshot()["token_grants"]["client_credentials"])


def invalid_client(emu: Emulator) -> int:
    return int(emu.counters.snapshot()["token_failures"].get("invalid_client", 0))


async def test_sighup_rereads_the_secret_file_and_never_stops_the_process(
    emu: Emulator, launch: Launch, tmp_path: Path
) -> None:
    secret_file = tmp_path / "client-secret"
    secret_file.write_text(emu.client_secret + "\n")
    sidecar = await launch("--client-secret-file", str(secret_file))
    before = grants(emu)
    # Rotate: the workspace now accepts only the new secret, and the file holds it. A healthy token makes
    # the file watcher do nothing; SIGHUP fetches now, and succeeds only with the file read anew.
    emu.set_client_secret(emu.client_id, "rotated-secret-value-2")
    secret_file.write_text("rotated-secret-value-2\n")
    sidecar.signal(signal.SIGHUP)

    async def fetched() -> bool:
        return grants(emu) > before

    await eventually(fetched)
    assert invalid_client(emu) == 0
    sidecar.signal(signal.SIGHUP)  # again: still alive

    async def fetched_twice() -> bool:
        return grants(emu) > before + 1

    await eventually(fetched_twice)
    assert sidecar.process.poll() is None and await readyz(sidecar) == 200
    log = sidecar.log()
    assert log.count(f"SIGHUP: re-reading {secret_file}; fetching a new workspace token now") == 2
    assert "rotated-secret-value-2" not in log and "Traceback" not in log
    sidecar.signal(signal.SIGTERM)
    assert await sidecar.wait(30) == 0


async def test_sighup_cuts_an_invalid_client_backoff_short(emu: Emulator, launch: Launch) -> None:
    wrong = "secret-not-known-to-the-workspace"
    sidecar = await launch(env={"DATABRICKS_CLIENT_SECRET": wrong}, ready=False)

    async def failed_twice() -> bool:
        return invalid_client(emu) >= 2

    await eventually(failed_twice)  # at 0 s and 5 s; the next try would be 10 s (at least 9 s) later
    hung_up = time.monotonic()
    emu.set_client_secret(emu.client_id, wrong)  # an admin fixed the principal
    sidecar.signal(signal.SIGHUP)

    async def ready() -> bool:
        return await readyz(sidecar) == 200

    await eventually(ready)
    assert time.monotonic() - hung_up < 9  # before the backoff would have ended: SIGHUP retried at once
    assert invalid_client(emu) == 2
    log = sidecar.log()
    assert "1 failed token(s) retried at once" in log and "client secret comes from the environment" in log
    assert sidecar.process.poll() is None
