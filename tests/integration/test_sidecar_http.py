"""The HTTP front against the emulator over real TLS: routing, tokens, pools, errors."""

from __future__ import annotations

import asyncio
import io
import json
import time

import aiohttp
import pytest
import requests
from yarl import URL

from proxy.app import Sidecar
from proxy.config import MAX_BODY_BYTES
from proxy.emulator import Emulator
from tests.integration.conftest import SidecarFactory, url

RECORDS = {"dataframe_records": [{"a": 1, "b": 2.5}, {"a": 10, "b": -1}]}


def invocations(emu: Emulator, endpoint: str) -> int:
    return sum(emu.counters.snapshot()["invocations"].get(endpoint, {}).values())


def grants(emu: Emulator, kind: str) -> int:
    return int(emu.counters.snapshot()["token_grants"].get(kind, 0))


async def test_sequential_calls_reuse_tokens_and_connections(
    emu: Emulator, make_sidecar: SidecarFactory, client: aiohttp.ClientSession
) -> None:
    async with make_sidecar(endpoint=["fraud-ro", "features-ro"]) as sidecar:
        for i in range(200):
            name = "fraud-ro" if i % 2 else "features-ro"
            async with client.post(url(sidecar, f"/serving-endpoints/{name}/invocations"), json=RECORDS) as resp:
                assert resp.status == 200, await resp.text()
                body = await resp.json()
            if name == "fraud-ro":
                assert body == {"predictions": [3.5, 9]}
            else:
                assert [row["score"] for row in body["outputs"]] == [3.5, 9]
        snapshot = emu.counters.snapshot()
    assert grants(emu, "client_credentials") == 1
    assert grants(emu, "jwt_bearer") == 2  # one per endpoint
    assert snapshot["invocations"]["fraud-ro"]["200"] == 100
    assert snapshot["data_plane_connections"] <= 6  # warm-up plus a spare per endpoint, not one per call


async def test_plain_endpoint_uses_the_workspace_token(
    emu: Emulator, sidecar: Sidecar, client: aiohttp.ClientSession
) -> None:
    async with client.post(
        url(sidecar, "/serving-endpoints/plain-model/invocations"), json={"instances": [[1, 2], [3, 4]]}
    ) as resp:
        assert resp.status == 200, await resp.text()
        assert await resp.json() == {"predictions": [3, 7]}
    assert grants(emu, "jwt_bearer") == 0


async def test_served_model_form_and_header_come_back(sidecar: Sidecar, client: aiohttp.ClientSession) -> None:
    path = "/serving-endpoints/fraud-ro/served-models/fraud-ro-1/invocations"
    async with client.post(url(sidecar, path), json=RECORDS) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["served-model-name"] == "fraud-ro-1"
    async with client.post(url(sidecar, "/serving-endpoints/fraud-ro/invocations"), json=RECORDS) as resp:
        assert resp.headers["served-model-name"] == "fraud-ro-1"


async def test_callers_authorization_is_dropped(sidecar: Sidecar, client: aiohttp.ClientSession) -> None:
    headers = {"Authorization": "Bearer not-a-databricks-token"}
    async with client.post(
        url(sidecar, "/serving-endpoints/fraud-ro/invocations"), json=RECORDS, headers=headers
    ) as resp:
        assert resp.status == 200


async def test_plain_requests_and_curl_without_auth(sidecar: Sidecar) -> None:
    target = url(sidecar, "/serving-endpoints/fraud-ro/invocations")
    answer = await asyncio.to_thread(requests.post, target, json=RECORDS, timeout=10)
    assert answer.status_code == 200 and answer.json() == {"predictions": [3.5, 9]}
    proc = await asyncio.create_subprocess_exec(
        "curl",
        "-s",
        "-S",
        "--fail-with-body",
        target,
        "-H",
        "Content-Type: application/json",
        "-d",
        json.dumps(RECORDS),
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0 and json.loads(out) == {"predictions": [3.5, 9]}


async def test_streaming_delivers_first_event_long_before_the_last(
    sidecar: Sidecar, client: aiohttp.ClientSession
) -> None:
    words = " ".join(f"w{i}" for i in range(16))
    body = {"messages": [{"role": "user", "content": words}], "stream": True}
    started = time.perf_counter()
    arrivals: list[float] = []
    events: list[bytes] = []
    async with client.post(url(sidecar, "/serving-endpoints/chat-ro/invocations"), json=body) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        async for line in resp.content:
            if line.startswith(b"data:"):
                arrivals.append(time.perf_counter() - started)
                events.append(line.strip())
    assert events[-1] == b"data: [DONE]"
    assert len(events) >= 17
    first_delta = json.loads(events[0][len(b"data:") :])["choices"][0]["delta"]
    assert first_delta.get("content") or first_delta.get("role")
    assert arrivals[0] < arrivals[-1] / 3  # events arrive as produced, not buffered to the end


async def test_unknown_endpoint_is_a_databricks_shaped_404(
    emu: Emulator, sidecar: Sidecar, client: aiohttp.ClientSession
) -> None:
    async with client.post(url(sidecar, "/serving-endpoints/no-such-model/invocations"), json=RECORDS) as resp:
        assert resp.status == 404
        body = await resp.json()
    assert body["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    assert "no-such-model" in body["message"]
    # negative cache: a second call does not read the metadata again
    reads = emu.counters.snapshot()["metadata_reads"].get("no-such-model", 0)
    async with client.post(url(sidecar, "/serving-endpoints/no-such-model/invocations"), json=RECORDS) as resp:
        assert resp.status == 404
    assert emu.counters.snapshot()["metadata_reads"].get("no-such-model", 0) == reads


async def test_oversized_body_is_413_and_nothing_is_sent(
    emu: Emulator, sidecar: Sidecar, client: aiohttp.ClientSession
) -> None:
    before = invocations(emu, "fraud-ro")
    payload = io.BytesIO(b"x" * (MAX_BODY_BYTES + 1))
    async with client.post(url(sidecar, "/serving-endpoints/fraud-ro/invocations"), data=payload) as resp:
        assert resp.status == 413
        assert (await resp.json())["error_code"] == "REQUEST_ENTITY_TOO_LARGE"
    assert invocations(emu, "fraud-ro") == before
    async with client.post(url(sidecar, "/serving-endpoints/fraud-ro/invocations"), json=RECORDS) as resp:
        assert resp.status == 200  # and the sidecar keeps serving


async def test_non_json_body_passes_through_and_upstream_400_comes_back(
    sidecar: Sidecar, client: aiohttp.ClientSession
) -> None:
    headers = {"Content-Type": "application/json"}
    target = url(sidecar, "/serving-endpoints/fraud-ro/invocations")
    async with client.post(target, data=b"{not json", headers=headers) as resp:
        assert resp.status == 400
        assert (await resp.json())["error_code"] == "BAD_REQUEST"


async def test_path_tricks_reach_nothing_upstream(
    emu: Emulator, sidecar: Sidecar, client: aiohttp.ClientSession
) -> None:
    before = emu.counters.snapshot()
    tricks = [
        "/serving-endpoints/../api/2.0/serving-endpoints/fraud-ro",
        "/serving-endpoints/fraud-ro%2F..%2F..%2Fapi/invocations",
        "/serving-endpoints/%2e%2e/invocations",
        "/serving-endpoints/fraud-ro/served-models/..%2f..%2finvocations/invocations",
        "/serving-endpoints/chat/completions/../../api/2.0/serving-endpoints",
    ]
    refused = [  # the workspace API: read-only GETs of serving endpoints only
        "/api/2.0/serving-endpoints",
        "/api/2.0/serving-endpoints/fraud-ro%2F..%2F..%2Fpermissions",
        "/api/2.0/serving-endpoints/../../2.0/secrets/list",
    ]
    for trick in [*tricks, *refused]:
        raw = URL(url(sidecar, trick), encoded=True)  # sent exactly as written, no client-side normalisation
        async with client.post(raw, data=b"{}", allow_redirects=False) as resp:
            expected = (403, "PERMISSION_DENIED") if trick in refused else (404, "RESOURCE_DOES_NOT_EXIST")
            assert (resp.status, (await resp.json())["error_code"]) == expected, trick
    for trick in refused[1:]:  # a GET of anything but a plain endpoint name is refused as well
        async with client.get(URL(url(sidecar, trick), encoded=True), allow_redirects=False) as resp:
            assert resp.status == 403, trick
    async with client.post(url(sidecar, "/oidc/v1/token"), data=b"{}") as resp:  # the local OAuth facade
        assert (resp.status, (await resp.json())["error"]) == (400, "invalid_request")
    after = emu.counters.snapshot()
    assert after["invocations"] == before["invocations"]
    assert after["metadata_reads"] == before["metadata_reads"]
    assert after["token_grants"] == before["token_grants"]


async def test_get_is_refused_without_reaching_upstream(sidecar: Sidecar, client: aiohttp.ClientSession) -> None:
    async with client.get(url(sidecar, "/serving-endpoints/fraud-ro/invocations")) as resp:
        assert resp.status == 405


async def test_admin_endpoints(sidecar: Sidecar, client: aiohttp.ClientSession) -> None:
    for path in ("/healthz", "/readyz", "/startupz"):
        async with client.get(url(sidecar, path, "admin")) as resp:
            assert resp.status == 200, path
    async with client.get(url(sidecar, "/metrics", "admin")) as resp:
        text = await resp.text()
    assert "serving_sidecar_token_fetches_total" in text
    assert "serving_sidecar_build_info" in text


async def test_a_bug_is_a_databricks_shaped_500_and_the_sidecar_keeps_serving(
    sidecar: Sidecar, client: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(url: str, served_model: str | None) -> None:
        raise RuntimeError("a bug")

    original = sidecar.forwarder.target
    monkeypatch.setattr(sidecar.forwarder, "target", broken)
    async with client.post(url(sidecar, "/serving-endpoints/fraud-ro/invocations"), json=RECORDS) as resp:
        assert resp.status == 500
        body = await resp.json()
    assert body["error_code"] == "INTERNAL_ERROR" and "RuntimeError" in body["message"]
    monkeypatch.setattr(sidecar.forwarder, "target", original)
    async with client.post(url(sidecar, "/serving-endpoints/fraud-ro/invocations"), json=RECORDS) as resp:
        assert resp.status == 200
