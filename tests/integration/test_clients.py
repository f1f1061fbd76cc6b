"""The clients people already use, unmodified, through the sidecar: the real openai, databricks-sdk and mlflow.

The emulator counts every bearer token it is shown by whether it issued it (`bearer_tokens`): "foreign"
stays 0, so neither a caller's API key nor a local OAuth token of the sidecar ever left the sidecar.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from databricks.sdk import WorkspaceClient
from databricks.sdk.core import Config

from proxy.app import Sidecar
from proxy.emulator import Emulator
from proxy.emulator.models import embedding

from .conftest import url

API_KEY = "sk-caller-api-key-that-must-stay-local"
HELLO = [{"role": "user", "content": "hello there"}]


@pytest.fixture
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No Databricks configuration of the machine's user leaks into the clients."""
    for key in list(os.environ):
        if key.startswith(("DATABRICKS_", "ARM_", "AZURE_", "GOOGLE_", "MLFLOW_", "OPENAI_")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(tmp_path / "missing.cfg"))
    yield


def foreign_tokens(emu: Emulator) -> int:
    counted = emu.counters.snapshot()["bearer_tokens"]
    assert counted["own"] > 0  # the sidecar's own tokens did reach it
    return int(counted["foreign"])


def openai_client(sidecar: Sidecar) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url(sidecar, "/serving-endpoints"), api_key=API_KEY, max_retries=0)


@pytest.mark.usefixtures("clean_env")
async def test_openai_chat_streaming_embeddings_and_responses(emu: Emulator, sidecar: Sidecar) -> None:
    async with openai_client(sidecar) as client:
        chat = await client.chat.completions.create(model="chat-ro", messages=HELLO)  # type: ignore[arg-type]
        stream = await client.chat.completions.create(model="chat-ro", messages=HELLO, stream=True)  # type: ignore[arg-type]
        pieces = [chunk.choices[0].delta.content async for chunk in stream]
        embedded = await client.embeddings.create(model="embed-ro", input=["first text", "second"])
        response = await client.responses.create(model="chat-ro", input="hello there")
        events = [event async for event in await client.responses.create(model="chat-ro", input="hi", stream=True)]
        models = [model.id async for model in client.models.list()]

    assert chat.choices[0].message.content == "echo: hello there"
    assert chat.model == "chat-ro-1"
    assert pieces == ["echo:", " hello", " there"]  # event by event
    # The client asked for base64 (its default) and decoded it: the emulator's float32 values, exactly.
    assert [item.embedding for item in embedded.data] == [embedding("first text"), embedding("second")]
    assert response.output_text == "echo: hello there"
    deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
    assert "".join(deltas) == "echo: hi"
    assert {"chat-ro", "embed-ro"} <= set(models)
    invocations = emu.counters.snapshot()["invocations"]
    assert invocations == {"chat-ro": {"200": 4}, "embed-ro": {"200": 1}}
    assert foreign_tokens(emu) == 0  # the caller's API key stayed in the sidecar


@pytest.mark.usefixtures("clean_env")
async def test_openai_unknown_or_missing_model_is_a_clear_error(emu: Emulator, sidecar: Sidecar) -> None:
    async with openai_client(sidecar) as client:
        with pytest.raises(openai.NotFoundError) as unknown:
            await client.chat.completions.create(model="no-such-endpoint", messages=HELLO)  # type: ignore[arg-type]
        with pytest.raises(openai.BadRequestError) as missing:
            await client.embeddings.create(model="", input="x")
        with pytest.raises(openai.NotFoundError) as malformed:
            await client.embeddings.create(model="databricks/embed-ro", input="x")

    assert "'no-such-endpoint' does not exist" in str(unknown.value)
    assert "missing 'model'" in str(missing.value)
    assert "not a serving endpoint name" in str(malformed.value)
    assert emu.counters.snapshot()["invocations"] == {}


async def test_openai_routes_refuse_what_they_cannot_route(sidecar: Sidecar, client: aiohttp.ClientSession) -> None:
    target = url(sidecar, "/serving-endpoints/chat/completions")
    async with client.post(target, data=b"[1, 2]") as resp:
        assert resp.status == 400
        assert "JSON object whose 'model' field" in (await resp.json())["message"]
    async with client.get(target) as resp:
        assert (resp.status, (await resp.json())["error_code"]) == (405, "METHOD_NOT_ALLOWED")
    async with client.post(url(sidecar, "/serving-endpoints/models")) as resp:
        assert resp.status == 405


@pytest.mark.usefixtures("clean_env")
async def test_databricks_sdk_get_query_and_data_plane_query(
    emu: Emulator, sidecar: Sidecar, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="databricks")
    base = url(sidecar, "")

    def scenario() -> dict[str, Any]:
        # Any client id and secret: the sidecar's local OAuth facade answers the SDK's OAuth calls.
        config = Config(host=base, client_id="local", client_secret="local", retry_timeout_seconds=10)
        w = WorkspaceClient(config=config)
        endpoint = w.serving_endpoints.get("fraud-ro")
        assert endpoint.data_plane_info is not None and endpoint.data_plane_info.query_info is not None
        records = [{"a": 1, "b": 2.5}, {"a": 3}]
        return {
            "route_optimized": endpoint.route_optimized,
            "data_plane_url": endpoint.data_plane_info.query_info.endpoint_url,
            "query": w.serving_endpoints.query(name="fraud-ro", dataframe_records=records).predictions,
            "data_plane": w.serving_endpoints_data_plane.query(name="fraud-ro", dataframe_records=records),
            "listed": [e.name for e in w.serving_endpoints.list()],
        }

    seen = await asyncio.to_thread(scenario)

    assert seen["route_optimized"] is True
    assert seen["data_plane_url"] == f"{base}/serving-endpoints/fraud-ro/invocations"  # the sidecar itself
    assert seen["query"] == [3.5, 3]
    assert seen["data_plane"].predictions == [3.5, 3]
    assert seen["data_plane"].served_model_name == "fraud-ro-1"
    assert "fraud-ro" in seen["listed"]
    assert emu.counters.snapshot()["invocations"] == {"fraud-ro": {"200": 2}}
    assert not [r for r in caplog.records if "host metadata" in r.getMessage() and r.levelno >= logging.WARNING]
    assert foreign_tokens(emu) == 0  # no local token ever reached the workspace or the data plane
    assert emu.counters.snapshot()["token_failures"] == {}  # nor was one offered as a jwt-bearer assertion


@pytest.mark.usefixtures("clean_env")
async def test_databricks_sdk_reads_only(sidecar: Sidecar) -> None:
    from databricks.sdk.errors import PermissionDenied

    def scenario() -> None:
        WorkspaceClient(host=url(sidecar, ""), token="unused").serving_endpoints.delete("fraud-ro")

    with pytest.raises(PermissionDenied, match="serves queries only"):
        await asyncio.to_thread(scenario)


@pytest.mark.usefixtures("clean_env")
async def test_mlflow_deployments_predict_and_predict_stream(
    emu: Emulator, sidecar: Sidecar, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABRICKS_HOST", url(sidecar, ""))
    monkeypatch.setenv("DATABRICKS_TOKEN", API_KEY)  # dropped by the sidecar, like any caller credential

    def scenario() -> tuple[Any, list[Any], Any]:
        from mlflow.deployments import get_deploy_client

        client = get_deploy_client("databricks")
        prediction = client.predict(endpoint="fraud-ro", inputs={"dataframe_records": [{"a": 1, "b": 2}]})
        chunks = list(client.predict_stream(endpoint="chat-ro", inputs={"messages": HELLO}))
        return prediction, chunks, client.get_endpoint("fraud-ro")

    prediction, chunks, endpoint = await asyncio.to_thread(scenario)

    assert prediction["predictions"] == [3]
    assert [chunk["choices"][0]["delta"]["content"] for chunk in chunks] == ["echo:", " hello", " there"]
    assert endpoint["name"] == "fraud-ro"
    assert emu.counters.snapshot()["invocations"] == {"fraud-ro": {"200": 1}, "chat-ro": {"200": 1}}
    assert foreign_tokens(emu) == 0
