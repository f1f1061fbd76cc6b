"""Workspace APIs: host metadata, endpoint metadata (get and list), SCIM Me, unknown paths."""

from __future__ import annotations

import json

import aiohttp
import pytest

from proxy.emulator import Emulator

from .conftest import bearer, data_plane_token, workspace_token


async def test_host_metadata_needs_no_token(emulator: Emulator, client: aiohttp.ClientSession) -> None:
    async with client.get(emulator.workspace_url + "/.well-known/databricks-config") as resp:
        body = await resp.json()
    assert body["oidc_endpoint"] == emulator.workspace_url + "/oidc"
    assert body["workspace_id"] == emulator.settings.workspace_id
    assert body["cloud"] == "AWS"
    assert body["token_federation_default_oidc_audiences"] == [emulator.token_endpoint]


async def _get(client: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> tuple[int, dict[str, object]]:
    async with client.get(url, headers=headers) as resp:
        assert resp.content_type == "application/json"
        return resp.status, await resp.json()


async def test_route_optimized_endpoint_metadata(emulator: Emulator, client: aiohttp.ClientSession) -> None:
    token = await workspace_token(client, emulator)
    status, body = await _get(client, emulator.workspace_url + "/api/2.0/serving-endpoints/fraud-ro", bearer(token))
    assert status == 200
    endpoint_id = emulator.endpoint_id("fraud-ro")
    assert body["id"] == endpoint_id
    assert len(endpoint_id) == 32
    assert body["route_optimized"] is True
    assert body["endpoint_url"] == emulator.endpoint_url("fraud-ro")
    query_info = body["data_plane_info"]["query_info"]  # type: ignore[index]
    assert query_info["endpoint_url"] == emulator.endpoint_url("fraud-ro")
    assert json.loads(query_info["authorization_details"]) == [
        {
            "type": "workspace_permission",
            "object_type": "serving-endpoints",
            "object_path": f"/serving-endpoints/{endpoint_id}",
            "actions": ["query_inference_endpoint"],
        }
    ]
    assert body["state"] == {"ready": "READY", "config_update": "NOT_UPDATING"}
    routes = body["config"]["traffic_config"]["routes"]  # type: ignore[index]
    assert routes[0]["served_model_name"] == "fraud-ro-1"
    assert emulator.counters.snapshot()["metadata_reads"] == {"fraud-ro": 1}


async def test_plain_endpoint_metadata_has_no_data_plane_info(
    emulator: Emulator, client: aiohttp.ClientSession
) -> None:
    token = await workspace_token(client, emulator)
    status, body = await _get(client, emulator.workspace_url + "/api/2.0/serving-endpoints/plain-model", bearer(token))
    assert status == 200
    assert body["route_optimized"] is False
    assert "endpoint_url" not in body
    assert "data_plane_info" not in body


async def test_feature_spec_entity_has_no_version(emulator: Emulator, client: aiohttp.ClientSession) -> None:
    token = await workspace_token(client, emulator)
    _, body = await _get(client, emulator.workspace_url + "/api/2.0/serving-endpoints/features-ro", bearer(token))
    entity = body["config"]["served_entities"][0]  # type: ignore[index]
    assert "entity_version" not in entity
    assert entity["entity_name"].endswith("_spec")


@pytest.mark.parametrize(
    "headers",
    [{}, {"X-Databricks-Org-Id": "1444828305810485"}, {"X-Databricks-Workspace-Id": "1444828305810485"}],
)
async def test_routing_headers_are_optional(
    emulator: Emulator, client: aiohttp.ClientSession, headers: dict[str, str]
) -> None:
    token = await workspace_token(client, emulator)
    status, _ = await _get(
        client, emulator.workspace_url + "/api/2.0/serving-endpoints/fraud-ro", {**bearer(token), **headers}
    )
    assert status == 200


async def test_a_routing_header_for_another_workspace_is_refused(
    emulator: Emulator, client: aiohttp.ClientSession
) -> None:
    token = await workspace_token(client, emulator)
    status, body = await _get(
        client,
        emulator.workspace_url + "/api/2.0/serving-endpoints/fraud-ro",
        {**bearer(token), "X-Databricks-Workspace-Id": "42"},
    )
    assert (status, body["error_code"]) == (403, "PERMISSION_DENIED")


async def test_unknown_endpoint_is_resource_does_not_exist(emulator: Emulator, client: aiohttp.ClientSession) -> None:
    token = await workspace_token(client, emulator)
    status, body = await _get(client, emulator.workspace_url + "/api/2.0/serving-endpoints/nope", bearer(token))
    assert status == 404
    assert body["error_code"] == "RESOURCE_DOES_NOT_EXIST"


async def test_metadata_needs_a_live_workspace_token(emulator: Emulator, client: aiohttp.ClientSession) -> None:
    url = emulator.workspace_url + "/api/2.0/serving-endpoints/fraud-ro"
    dp = await data_plane_token(client, emulator, "fraud-ro")
    for headers in ({}, bearer("garbage"), bearer(dp), {"Authorization": "Basic eDp5"}):
        status, body = await _get(client, url, headers)
        assert (status, body["error_code"]) == (401, "UNAUTHENTICATED")
    emulator.faults.cp_token_ttl = 0
    expired = await workspace_token(client, emulator)
    status, _ = await _get(client, url, bearer(expired))
    assert status == 401


async def test_list_endpoints(emulator: Emulator, client: aiohttp.ClientSession) -> None:
    token = await workspace_token(client, emulator)
    status, body = await _get(client, emulator.workspace_url + "/api/2.0/serving-endpoints", bearer(token))
    assert status == 200
    names = [e["name"] for e in body["endpoints"]]  # type: ignore[attr-defined]
    assert names == ["fraud-ro", "features-ro", "chat-ro", "embed-ro", "plain-model"]
    assert emulator.counters.snapshot()["metadata_lists"] == 1


async def test_scim_me_reports_the_workspace_id(emulator: Emulator, client: aiohttp.ClientSession) -> None:
    token = await workspace_token(client, emulator)
    async with client.get(emulator.workspace_url + "/api/2.0/preview/scim/v2/Me", headers=bearer(token)) as resp:
        assert resp.headers["X-Databricks-Org-Id"] == emulator.settings.workspace_id
        assert (await resp.json())["userName"] == emulator.client_id


@pytest.mark.parametrize(("method", "status"), [("GET", 404), ("DELETE", 405)])
async def test_unknown_paths_and_methods_are_json(
    emulator: Emulator, client: aiohttp.ClientSession, method: str, status: int
) -> None:
    path = "/api/2.0/nothing" if status == 404 else "/api/2.0/serving-endpoints/fraud-ro"
    async with client.request(method, emulator.workspace_url + path) as resp:
        assert resp.status == status
        assert resp.content_type == "application/json"
        assert "error_code" in await resp.json()


async def test_plain_http_mode() -> None:
    from proxy.emulator import EmulatorSettings

    async with Emulator(EmulatorSettings(tls=False)) as emu:
        assert emu.workspace_url.startswith("http://127.0.0.1:")
        assert emu.endpoint_url("fraud-ro").startswith("http://127.0.0.1:")
        assert emu.ca_pem is None
        async with aiohttp.ClientSession() as session:
            token = await workspace_token(session, emu)
            dp = await data_plane_token(session, emu, "fraud-ro")
            async with session.post(emu.endpoint_url("fraud-ro"), json={"inputs": 5}, headers=bearer(dp)) as resp:
                assert await resp.json() == {"predictions": [5]}
    assert token


async def test_ca_file_trusts_every_listener(emulator: Emulator, tmp_path: object) -> None:
    import ssl
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    path = emulator.write_ca(tmp_path / "ca.pem")
    assert path.read_bytes() == emulator.ca_pem
    context = ssl.create_default_context(cafile=str(path))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
        for url in (
            emulator.workspace_url + "/.well-known/databricks-config",
            emulator.endpoint_url("chat-ro"),
        ):
            async with session.get(url.replace("127.0.0.1", "localhost")) as resp:
                assert resp.content_type == "application/json"
