"""An upstream answer that is not a final HTTP response (e.g. `101 Switching Protocols`) becomes a 502,
instead of being relayed as if it were one (the caller then waited forever). A raw TLS server plays the
data plane; the emulator still mints the data-plane token."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from proxy.emulator import Emulator
from tests.integration.conftest import url
from tests.integration.fakes import OtherCA, TlsServer, sidecar_with

RECORDS = {"dataframe_records": [{"a": 1, "b": 2}]}
SWITCHING = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
ANSWER = b'{"predictions": [3]}'
CONTINUE_THEN_OK = (
    b"HTTP/1.1 100 Continue\r\n\r\n"
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(ANSWER), ANSWER)
)


def point_fraud_at(emu: Emulator, server: TlsServer) -> None:
    target = f"https://127.0.0.1:{server.port}/1/serving-endpoints/fraud-ro/invocations"
    query_info = {"endpoint_url": target, "authorization_details": emu.authorization_details("fraud-ro")}
    emu.faults.metadata_overrides = {"fraud-ro": {"data_plane_info": {"query_info": query_info}}}


async def test_101_switching_protocols_is_a_502_not_a_hang(
    emu: Emulator, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    ca = OtherCA()
    async with TlsServer(ca, SWITCHING, hold=True) as upstream:
        point_fraud_at(emu, upstream)
        async with sidecar_with(emu, ca.bundle(emu, tmp_path / "ca.pem")) as sidecar:
            target = url(sidecar, "/serving-endpoints/fraud-ro/invocations")
            async with asyncio.timeout(30), client.post(target, json=RECORDS) as resp:
                status, body, headers = resp.status, await resp.json(), resp.headers
    assert len(upstream.requests) == 1  # sent once, never again
    assert (status, body["error_code"]) == (502, "BAD_GATEWAY")
    assert "101" in body["message"] and "not a final response" in body["message"]
    assert headers["x-should-retry"] == "false"  # the upstream did something with it: may have run


async def test_100_continue_is_skipped_and_the_final_answer_relayed(
    emu: Emulator, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    ca = OtherCA()
    async with TlsServer(ca, CONTINUE_THEN_OK) as upstream:
        point_fraud_at(emu, upstream)
        async with sidecar_with(emu, ca.bundle(emu, tmp_path / "ca.pem")) as sidecar:
            target = url(sidecar, "/serving-endpoints/fraud-ro/invocations")
            async with asyncio.timeout(30), client.post(target, json=RECORDS) as resp:
                assert resp.status == 200
                assert await resp.json() == {"predictions": [3]}
