"""Hostile token answers and error texts, from the emulated token endpoint (knobs `token_answer_override`
and `token_answer_raw`): nothing unusable is ever sent as a bearer, /readyz and the 503 say what was
wrong, nothing answers 500, and a token server's text is cut and redacted wherever it shows."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from typing import Any

import aiohttp
import grpc
import pytest

from proxy._proto.servingsidecar.v1 import serving_proxy_pb2 as pb
from proxy._proto.servingsidecar.v1 import serving_proxy_pb2_grpc as pb_grpc
from proxy.app import Sidecar
from proxy.credentials.oauth import MAX_EXPIRES_IN
from proxy.emulator import Emulator

from .conftest import SidecarFactory, url

INVOKE = "/serving-endpoints/{}/invocations"
RECORDS = {"dataframe_records": [{"amount": 1.0}]}
NULL_TOKEN = '{"access_token": null, "token_type": "Bearer", "expires_in": 3600}'

# (knob, value for the workspace answer, what /readyz and the 503 must say)
HOSTILE_WORKSPACE_ANSWERS = [
    ("raw", NULL_TOKEN, "access_token is null, not a string"),
    ("override", {"access_token": {"nested": "object"}}, "access_token is an object, not a string"),
    ("override", {"access_token": ""}, "access_token is empty"),
    ("override", {"access_token": "abc\r\nX-Injected: yes"}, "characters a bearer token cannot have"),
    ("override", {"expires_in": -5}, "expires_in -5, not a finite positive number"),
    ("override", {"expires_in": 10}, "expires in 10 s: unusable on arrival"),
    ("override", {"expires_in": float("nan")}, "expires_in NaN, not a finite positive number"),
    ("raw", '{"access_token": "abc", "expires_in": "soon"}', 'expires_in "soon", not a finite positive number'),
    ("raw", "<html>oops</html>", "without a JSON object"),
]


def set_answer(emu: Emulator, kind: str, knob: str, value: Any) -> None:
    if knob == "raw":
        emu.faults.token_answer_raw = {kind: value}
    else:
        emu.faults.token_answer_override = {kind: value}


async def readyz(client: aiohttp.ClientSession, sidecar: Sidecar) -> tuple[int, str]:
    async with client.get(url(sidecar, "/readyz", "admin")) as resp:
        return resp.status, await resp.text()


async def wait_for_reason(client: aiohttp.ClientSession, sidecar: Sidecar, text: str) -> str:
    """The /readyz body once its reason mentions `text` (the first fetch has failed by then)."""
    deadline = time.monotonic() + 15
    body = ""
    while time.monotonic() < deadline:
        status, body = await readyz(client, sidecar)
        if text in json.loads(body)["reason"]:
            assert status == 503
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"/readyz never said {text!r}; last: {body}")


async def invoke(client: aiohttp.ClientSession, sidecar: Sidecar, name: str = "fraud-ro") -> tuple[int, str]:
    async with client.post(url(sidecar, INVOKE.format(name)), json=RECORDS) as resp:
        return resp.status, await resp.text()


def bearer_sent(emu: Emulator) -> bool:
    """Whether any call that carries a bearer reached the emulated workspace or data plane."""
    counters = emu.counters.snapshot()
    return bool(counters["metadata_reads"] or counters["invocations"])


@pytest.mark.parametrize(("knob", "value", "said"), HOSTILE_WORKSPACE_ANSWERS)
async def test_a_hostile_workspace_token_answer_is_refused_with_a_clear_reason(
    emu: Emulator, make_sidecar: SidecarFactory, client: aiohttp.ClientSession, knob: str, value: Any, said: str
) -> None:
    set_answer(emu, "workspace", knob, value)
    async with make_sidecar(wait_ready=False) as sidecar:
        body = await wait_for_reason(client, sidecar, said)
        assert json.loads(body)["status"] == "unavailable"
        status, text = await invoke(client, sidecar)
        assert status == 503, text
        answer = json.loads(text)
        assert answer["error_code"] == "TEMPORARILY_UNAVAILABLE" and said in answer["message"]
        assert not bearer_sent(emu)  # no `Bearer None`, no header with a CR/LF, nothing went upstream
        assert not sidecar.health().ready


async def test_a_token_unusable_on_arrival_is_backed_off_not_fetched_per_call(
    emu: Emulator, make_sidecar: SidecarFactory, client: aiohttp.ClientSession
) -> None:
    emu.faults.token_answer_override = {"workspace": {"expires_in": 39}}
    async with make_sidecar(wait_ready=False) as sidecar:
        await wait_for_reason(client, sidecar, "unusable on arrival")
        statuses = [(await invoke(client, sidecar))[0] for _ in range(30)]
        # 503 no token; 429 once the lookups of a name not yet resolved are rate-limited
        assert statuses[0] == 503 and set(statuses) <= {503, 429}
        # Backoff 1, 2, 4 s...: a handful of fetches however many calls came; once per call would be 30+.
        assert emu.counters.snapshot()["token_grants"]["client_credentials"] <= 6
        assert not bearer_sent(emu)


async def test_a_huge_lifetime_is_clamped_and_the_sidecar_serves(
    emu: Emulator, make_sidecar: SidecarFactory, client: aiohttp.ClientSession
) -> None:
    emu.faults.token_answer_override = {"workspace": {"expires_in": 1e300}, "data_plane": {"expires_in": "1e300"}}
    async with make_sidecar() as sidecar:
        status, text = await invoke(client, sidecar)
        assert status == 200, text
        expires_at = sidecar.credentials.workspace.expires_at
        assert expires_at is not None and expires_at <= time.time() + MAX_EXPIRES_IN
        async with client.get(url(sidecar, "/metrics", "admin")) as resp:
            assert resp.status == 200


@pytest.mark.parametrize(("knob", "value", "said"), HOSTILE_WORKSPACE_ANSWERS[:7])
async def test_a_hostile_data_plane_token_answer_fails_that_call_only(
    emu: Emulator, make_sidecar: SidecarFactory, client: aiohttp.ClientSession, knob: str, value: Any, said: str
) -> None:
    set_answer(emu, "data_plane", knob, value)
    async with make_sidecar() as sidecar:
        status, text = await invoke(client, sidecar, "fraud-ro")
        assert status == 503, text
        assert said in json.loads(text)["message"] and "data_plane token" in json.loads(text)["message"]
        assert "fraud-ro" not in emu.counters.snapshot()["invocations"]  # nothing reached its data plane
        status, text = await invoke(client, sidecar, "plain-model")  # the workspace token still serves
        assert status == 200, text
        assert (await readyz(client, sidecar))[0] == 200


async def test_a_hostile_answer_over_grpc_is_unavailable_with_the_reason(
    emu: Emulator, make_sidecar: SidecarFactory, client: aiohttp.ClientSession
) -> None:
    emu.faults.token_answer_override = {"workspace": {"access_token": "a\nb"}}
    async with make_sidecar(wait_ready=False) as sidecar:
        await wait_for_reason(client, sidecar, "cannot have")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.port('grpc')}") as channel:
            stub = pb_grpc.ServingProxyStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await stub.Invoke(pb.InvokeRequest(endpoint="fraud-ro", json_body=b"{}"), timeout=10)
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "characters a bearer token cannot have" in (failed.value.details() or "")


# --- error texts: a huge description with an echoed Basic value --------------------------------------
# (just under the 1 MiB bound on control-plane answers; a larger answer is refused whole, unread)


async def test_a_huge_error_text_is_cut_and_redacted_everywhere(
    emu: Emulator, make_sidecar: SidecarFactory, client: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    basic = base64.b64encode(f"{emu.client_id}:{emu.client_secret}".encode()).decode()
    echoed = f"refused Authorization: Basic {basic} (secret {emu.client_secret}) "
    emu.faults.token_outage = True
    emu.faults.token_answer_override = {"error": {"error_description": echoed + "x" * 1_000_000}}
    caplog.set_level(logging.DEBUG)
    async with make_sidecar(wait_ready=False) as sidecar:
        body = await wait_for_reason(client, sidecar, "temporarily_unavailable")
        status, text = await invoke(client, sidecar)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.port('grpc')}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await pb_grpc.ServingProxyStub(channel).Invoke(pb.InvokeRequest(endpoint="fraud-ro"), timeout=10)
    details = failed.value.details() or ""
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert status == 503 and "Basic [REDACTED]" in body
    for shown in (body, text, details):
        assert len(shown) < 1000 and "characters, cut" in shown
    for shown in (body, text, details, logged):
        assert basic not in shown and emu.client_secret not in shown
    assert "token fetch failed" in logged and max(len(r.getMessage()) for r in caplog.records) < 1000
