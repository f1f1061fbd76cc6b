"""A debug-level run with the access log on writes no token and no secret, in either log format."""

from __future__ import annotations

import json
import signal
from typing import Any

import aiohttp
import pytest

from proxy.emulator import Emulator
from tests.e2e.conftest import Launch

CALLER_TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJjYWxsZXIifQ.Y2FsbGVyLXNpZ25hdHVyZQ"  # the caller's own, dropped


async def call(session: aiohttp.ClientSession, target: str, body: dict[str, Any], rid: str) -> int:
    headers = {"Authorization": f"Bearer {CALLER_TOKEN}", "X-Request-Id": rid}
    async with session.post(target, json=body, headers=headers) as resp:
        await resp.read()
        return resp.status


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_no_token_or_secret_in_any_log_line(
    emu: Emulator, launch: Launch, issued: list[str], log_format: str
) -> None:
    sidecar = await launch(
        "--endpoint", "fraud-ro", "--log-level", "debug", "--access-log", "--log-format", log_format,
        "--drain-delay", "0",
    )  # fmt: skip
    invoke = sidecar.url("/serving-endpoints/{}/invocations")
    chat = {"messages": [{"role": "user", "content": "hello there"}], "stream": True}
    async with aiohttp.ClientSession() as session:
        assert await call(session, invoke.format("fraud-ro"), {"dataframe_records": [{"a": 1}]}, "rid-1") == 200
        assert await call(session, invoke.format("plain-model"), {"instances": [[1, 2]]}, "rid-2") == 200
        assert await call(session, invoke.format("chat-ro"), chat, "rid-3") == 200
        assert await call(session, invoke.format("missing"), {}, "rid-4") == 404
        # A token pasted into the path reaches the access log's path field: redaction must catch it.
        assert await call(session, invoke.format(CALLER_TOKEN) + f"?token={CALLER_TOKEN}", {}, "rid-6") == 404
        emu.revoke_all_tokens()  # 401 upstream, then the re-mint path (its answer does not matter here)
        assert await call(session, invoke.format("fraud-ro"), {"dataframe_records": [{"a": 1}]}, "rid-5") in (200, 503)
    sidecar.signal(signal.SIGTERM)
    assert await sidecar.wait(15) == 0, sidecar.log()
    log = sidecar.log()

    for rid in ("rid-1", "rid-2", "rid-3", "rid-4", "rid-5", "rid-6"):
        assert rid in log, f"no access-log line for {rid}:\n{log}"
    if log_format == "json":
        for line in log.splitlines():
            json.loads(line)  # every line is one JSON object
    assert len(issued) >= 3, "workspace + two data-plane tokens expected, or the test proves nothing"
    secrets = {"client secret": emu.client_secret, "caller token": CALLER_TOKEN}
    secrets.update({f"issued token {i}": token for i, token in enumerate(issued)})
    for what, value in secrets.items():
        assert value not in log, f"{what} appears in the log"
        assert value[-24:] not in log, f"the end of the {what} appears in the log"
    assert "eyJ" not in log, "a JWT-looking string appears in the log"
    assert "/serving-endpoints/[REDACTED]/invocations 404" in log
