"""Token behaviour seen from outside: refresh ahead under traffic, wrong secrets, the databricks-sdk client."""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
import pytest
from databricks.sdk import WorkspaceClient

from proxy.app import Sidecar
from proxy.emulator import Emulator
from tests.integration.conftest import SidecarFactory, url

RECORDS = {"dataframe_records": [{"a": 1, "b": 2}]}


async def test_refresh_ahead_under_steady_traffic_never_stalls_a_request(
    emu: Emulator, make_sidecar: SidecarFactory, client: aiohttp.ClientSession
) -> None:
    # 60 s tokens refresh 55 s before expiry, i.e. about every 5 s; the token endpoint takes 3 s to
    # answer, so any request that waited on a refresh would take 3 s, against a few ms otherwise.
    emu.faults.cp_token_ttl = 60.0
    emu.faults.dp_token_ttl = 60.0
    async with make_sidecar(endpoint=["fraud-ro"]) as sidecar:
        emu.faults.token_latency = 3.0
        slowest = 0.0
        deadline = time.monotonic() + 10
        calls = 0
        while time.monotonic() < deadline and calls < 2000:
            started = time.perf_counter()
            async with client.post(url(sidecar, "/serving-endpoints/fraud-ro/invocations"), json=RECORDS) as resp:
                assert resp.status == 200, await resp.text()
                await resp.read()
            slowest = max(slowest, time.perf_counter() - started)
            calls += 1
            await asyncio.sleep(0.02)
    counts = emu.counters.snapshot()["token_grants"]
    assert counts["jwt_bearer"] >= 2, counts  # the data-plane token was refreshed during the traffic
    assert counts["client_credentials"] >= 2, counts
    assert slowest < 2.0, f"a request waited {slowest:.2f} s: it stalled on a token refresh"


async def test_wrong_secret_keeps_running_unready_with_a_clear_503(
    emu: Emulator, make_sidecar: SidecarFactory, client: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "definitely-the-wrong-secret-7f3a"
    caplog.set_level(logging.DEBUG)
    async with make_sidecar(client_secret=wrong, endpoint=["fraud-ro"], wait_ready=False) as sidecar:
        await asyncio.sleep(0.5)
        async with client.get(url(sidecar, "/readyz", "admin")) as resp:
            assert resp.status == 503
            ready_text = await resp.text()
        async with client.post(url(sidecar, "/serving-endpoints/fraud-ro/invocations"), json=RECORDS) as resp:
            assert resp.status == 503
            assert int(resp.headers["Retry-After"]) >= 1
            body = await resp.json()
        assert body["error_code"] == "TEMPORARILY_UNAVAILABLE"
        assert "invalid_client" in body["message"]
        async with client.get(url(sidecar, "/healthz", "admin")) as resp:
            assert resp.status == 200  # alive, just not ready
        grants_before = emu.counters.snapshot()["token_grants"]
        for _ in range(20):
            async with client.post(url(sidecar, "/serving-endpoints/fraud-ro/invocations"), json=RECORDS) as resp:
                assert resp.status == 503
        # a configuration error is not retried in a hot loop
        assert emu.counters.snapshot()["token_grants"] == grants_before
    assert wrong not in caplog.text
    assert wrong not in ready_text and wrong not in str(body)


async def test_databricks_sdk_through_the_sidecar(sidecar: Sidecar) -> None:
    def query() -> object:
        w = WorkspaceClient(host=url(sidecar, ""), token="anything")
        return w.serving_endpoints.query(name="fraud-ro", dataframe_records=[{"a": 1, "b": 2}])

    response = await asyncio.to_thread(query)
    assert response.predictions == [3]  # type: ignore[attr-defined]
    assert response.served_model_name == "fraud-ro-1"  # type: ignore[attr-defined]
