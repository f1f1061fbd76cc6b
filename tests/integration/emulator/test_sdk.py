"""The real databricks-sdk from PyPI talks to the emulator unmodified."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from databricks.sdk import WorkspaceClient
from databricks.sdk.core import Config
from databricks.sdk.data_plane import DataPlaneTokenSource
from databricks.sdk.errors import PermissionDenied
from databricks.sdk.service.serving import QueryEndpointResponse, ServingEndpointDetailed

from proxy.emulator import Emulator


@pytest.fixture
def sdk_env(emulator_ca_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Trust the emulator's CA through requests, and keep the user's Databricks config out."""
    for key in list(os.environ):
        if key.startswith(("DATABRICKS_", "ARM_", "AZURE_", "GOOGLE_")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(tmp_path / "missing.cfg"))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(emulator_ca_file))


def _client(emu: Emulator, secret: str | None = None) -> WorkspaceClient:
    config = Config(
        host=emu.workspace_url,
        client_id=emu.client_id,
        client_secret=secret or emu.client_secret,
        retry_timeout_seconds=5,
    )
    return WorkspaceClient(config=config)


@pytest.mark.usefixtures("sdk_env")
async def test_sdk_reads_metadata_and_queries_the_data_plane(emulator: Emulator) -> None:
    def scenario() -> tuple[ServingEndpointDetailed, QueryEndpointResponse, str | None]:
        w = _client(emulator)
        endpoint = w.serving_endpoints.get("fraud-ro")
        response = w.serving_endpoints_data_plane.query(
            name="fraud-ro", dataframe_records=[{"a": 1, "b": 2.5}, {"a": 3}]
        )
        return endpoint, response, w.config.workspace_id

    endpoint, response, workspace_id = await asyncio.to_thread(scenario)

    assert endpoint.route_optimized is True
    assert endpoint.id == emulator.endpoint_id("fraud-ro")
    assert response.predictions == [3.5, 3]
    assert response.served_model_name == "fraud-ro-1"
    assert workspace_id == emulator.settings.workspace_id
    counters = emulator.counters.snapshot()
    assert counters["token_grants"]["client_credentials"] >= 1
    assert counters["token_grants"]["jwt_bearer"] == 1
    assert counters["invocations"] == {"fraud-ro": {"200": 1}}


@pytest.mark.usefixtures("sdk_env")
async def test_sdk_reports_a_wrong_secret(emulator: Emulator) -> None:
    def scenario() -> None:
        _client(emulator, secret="wrong").serving_endpoints.get("fraud-ro")

    with pytest.raises(Exception, match="invalid_client: Client authentication failed"):
        await asyncio.to_thread(scenario)
    assert emulator.counters.snapshot()["token_failures"] == {"invalid_client": 1}


@pytest.mark.usefixtures("sdk_env")
async def test_sdk_gets_permission_denied_for_a_token_scoped_to_another_endpoint(emulator: Emulator) -> None:
    fraud_url = emulator.endpoint_url("fraud-ro")
    chat_details = emulator.authorization_details("chat-ro")

    def scenario() -> None:
        w = _client(emulator)
        tokens = DataPlaneTokenSource(w.config.host, w.config.oauth_token)
        token = tokens.token(fraud_url, chat_details)
        w.api_client.do(
            "POST",
            url=fraud_url,
            body={"dataframe_records": [{"a": 1}]},
            headers={"Content-Type": "application/json", "Accept": "application/json"},
            auth=lambda r: _authorize(r, f"{token.token_type} {token.access_token}"),
        )

    with pytest.raises(PermissionDenied, match="do not grant query access"):
        await asyncio.to_thread(scenario)
    assert emulator.counters.snapshot()["invocations"] == {"fraud-ro": {"403": 1}}


def _authorize(request: object, value: str) -> object:
    request.headers["Authorization"] = value  # type: ignore[attr-defined]
    return request
