"""Out of file descriptors: /readyz says so, the log gets one line per interval (no traceback flood), and
the sidecar recovers by itself once descriptors are free again."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import aiohttp

from .conftest import Launch

OPEN_FILES = 128  # the sidecar's limit: it needs about 40 to start


async def test_running_out_of_descriptors_is_a_readiness_state_not_a_traceback_flood(launch: Launch) -> None:
    sidecar = await launch("--endpoint", "fraud-ro", open_files=OPEN_FILES)
    held: list[asyncio.StreamWriter] = []
    try:
        for _ in range(OPEN_FILES + 40):  # more connections than it may hold descriptors for
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", sidecar.http_port)
                held.append(writer)
        await asyncio.sleep(2)  # accept() keeps failing meanwhile
        for writer in held[: len(held) // 2]:  # room for the probe below
            writer.close()
        reason = await _readyz_reason(sidecar.admin_port, "out of file descriptors")
        assert "open-files limit" in reason
    finally:
        for writer in held:
            writer.close()
    logged = sidecar.output.read_text()
    assert 1 <= logged.count("out of file descriptors") <= 3, logged[-2000:]
    assert "Traceback" not in logged, logged[-2000:]
    assert await _readyz_reason(sidecar.admin_port, "ready", seconds=15) == "ready"  # recovered by itself


async def _readyz_reason(port: int, wanted: str, seconds: float = 10) -> str:
    """Poll /readyz (bounded) until its reason contains `wanted`; return that reason."""
    deadline = time.monotonic() + seconds
    last = ""
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"http://127.0.0.1:{port}/readyz") as resp:
                    last = json.loads(await resp.text())["reason"]
                    if wanted in last:
                        return last
            await asyncio.sleep(0.1)
    raise AssertionError(f"/readyz never said {wanted!r}; last: {last!r}")
