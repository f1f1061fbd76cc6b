"""`serving-sidecar wait` and POST /quitquitquit, with the sidecar and the command as real processes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from proxy.emulator import Emulator
from tests.e2e.conftest import Launch, SidecarProcess

RECORDS = {"dataframe_records": [{"a": 1}]}


def start_wait(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DATABRICKS_", "SERVING_SIDECAR_"))}
    return subprocess.Popen(
        [sys.executable, "-m", "proxy", "wait", *args],
        env={**clean, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def finish(process: subprocess.Popen[str], seconds: float) -> tuple[int, str]:
    out, err = await asyncio.to_thread(process.communicate, timeout=seconds)
    return process.returncode, out + err


async def readyz(sidecar: SidecarProcess) -> int | None:
    try:
        async with aiohttp.ClientSession() as session, session.get(sidecar.url("/readyz", "admin")) as resp:
            return resp.status
    except aiohttp.ClientError:
        return None  # not listening (yet)


async def test_wait_exits_0_only_once_readyz_is_200(emu: Emulator, launch: Launch) -> None:
    emu.faults.token_outage = True  # the sidecar starts but cannot be ready
    sidecar = await launch(ready=False)
    waiting = start_wait("--admin-listen", f"127.0.0.1:{sidecar.admin_port}", "--timeout", "90")
    try:
        deadline = time.monotonic() + 15
        while await readyz(sidecar) != 503:
            assert time.monotonic() < deadline, sidecar.log()
            await asyncio.sleep(0.05)
        await asyncio.sleep(2.0)  # several of wait's polls, all answered 503
        assert waiting.poll() is None, "wait exited while /readyz answered 503"
        assert await readyz(sidecar) == 503
        emu.faults.token_outage = False
        code, output = await finish(waiting, 60)
    finally:
        if waiting.poll() is None:
            waiting.kill()
    assert code == 0, output
    assert "ready" in output and "not ready" not in output
    assert await readyz(sidecar) == 200


async def test_wait_exits_1_on_timeout_with_the_reason(emu: Emulator, launch: Launch) -> None:
    wrong = "wrong-secret-4f2a9c"
    sidecar = await launch(ready=False, env={"DATABRICKS_CLIENT_SECRET": wrong})
    code, output = await finish(start_wait("--admin-listen", f"127.0.0.1:{sidecar.admin_port}", "--timeout", "3"), 30)
    assert code == 1, output
    assert "not ready after 3 s" in output and "invalid_client" in output, output
    assert wrong not in output
    assert sidecar.process.poll() is None, "wait only watches; the sidecar keeps trying"


async def test_wait_reads_the_configuration_of_run(launch: Launch, tmp_path: Path) -> None:
    """The same --config file as `run` (here without any credential in it), an unspecified address included."""
    sidecar = await launch()
    config = tmp_path / "sidecar.yaml"
    config.write_text(f"admin_listen: 0.0.0.0:{sidecar.admin_port}\nlog_format: json\n")
    code, output = await finish(start_wait("--config", str(config), "--timeout", "30"), 60)
    assert code == 0, output
    assert f"http://127.0.0.1:{sidecar.admin_port}/readyz" in output
    env = {"SERVING_SIDECAR_ADMIN_LISTEN": f"127.0.0.1:{sidecar.admin_port}"}
    code, output = await finish(start_wait("--timeout", "30", env=env), 60)
    assert code == 0, output
    code, output = await finish(start_wait("--admin-listen", "nonsense"), 30)
    assert code == 2 and "admin-listen" in output


async def test_quitquitquit_drains_in_flight_calls_and_exits_0(emu: Emulator, launch: Launch) -> None:
    emu.faults.latency["fraud-ro"] = 2.0
    sidecar = await launch("--endpoint", "fraud-ro", "--drain-delay", "0.5", "--drain-timeout", "20")
    quit_url = sidecar.url("/quitquitquit", "admin")
    async with aiohttp.ClientSession() as session:
        async with session.get(quit_url) as resp:
            assert resp.status == 405
        assert sidecar.process.poll() is None

        async def call() -> tuple[int, bytes]:
            async with session.post(sidecar.url("/serving-endpoints/fraud-ro/invocations"), json=RECORDS) as resp:
                return resp.status, await resp.read()

        slow = asyncio.create_task(call())
        deadline = time.monotonic() + 10
        while emu.counters.snapshot()["invocations_in_flight"] < 1:
            assert time.monotonic() < deadline, "the slow call never reached the model"
            await asyncio.sleep(0.02)
        async with session.post(quit_url) as resp:
            assert resp.status == 200
        async with session.get(sidecar.url("/readyz", "admin")) as resp:
            assert resp.status == 503, "draining from the moment it was asked to stop"
        assert await asyncio.wait_for(slow, 30) == (200, b'{"predictions":[1]}')
    assert await sidecar.wait(30) == 0, sidecar.log()
    assert "POST /quitquitquit: draining" in sidecar.log()
