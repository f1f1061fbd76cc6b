"""Invocations: answers, streaming, token rules, size and input rules, paths."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from proxy.emulator import Emulator

from .conftest import basic, bearer, data_plane_token, invoke, post_token, workspace_token

RECORDS = {"dataframe_records": [{"a": 1, "b": 2.5, "name": "x"}, {"a": 3, "flag": True}]}


@pytest.mark.parametrize(
    ("body", "predictions"),
    [
        (RECORDS, [3.5, 3]),
        ({"dataframe_split": {"columns": ["a", "b"], "data": [[1, 2], [3, 4]]}}, [3, 7]),
        ({"instances": [[1, 2], {"x": 5, "y": [1, 1]}]}, [3, 7]),
        ({"inputs": [1, [2, 3]]}, [1, 5]),
        ({"inputs": {"t1": [1, 2], "t2": [3]}}, [6]),
        ({"inputs": [1], "params": {"k": 9}, "client_request_id": "r1"}, [1]),
    ],
)
async def test_custom_model_predictions(
    emulator: Emulator, client: aiohttp.ClientSession, body: dict[str, Any], predictions: list[float]
) -> None:
    token = await data_plane_token(client, emulator, "fraud-ro")
    status, answer, headers = await invoke(client, emulator.endpoint_url("fraud-ro"), token, body)
    assert status == 200
    assert answer == {"predictions": predictions}
    assert headers["served-model-name"] == "fraud-ro-1"


async def test_feature_spec_outputs(emulator: Emulator, client: aiohttp.ClientSession) -> None:
    token = await data_plane_token(client, emulator, "features-ro")
    url = emulator.endpoint_url("features-ro")
    body = {"dataframe_records": [{"user_id": 1, "ytd_spend": 598}, {"user_id": 2, "ytd_spend": 280}]}
    status, answer, _ = await invoke(client, url, token, body)
    assert status == 200
    assert answer == {
        "outputs": [
            {"user_id": 1, "ytd_spend": 598, "score": 599},
            {"user_id": 2, "ytd_spend": 280, "score": 282},
        ]
    }
    split = {"dataframe_split": {"columns": ["user_id", "v"], "data": [[1, 2.5]]}}
    assert (await invoke(client, url, token, split))[1] == {"outputs": [{"user_id": 1, "v": 2.5, "score": 3.5}]}


async def test_chat_completion(emulator: Emulator, client: aiohttp.ClientSession) -> None:
    token = await data_plane_token(client, emulator, "chat-ro")
    body = {"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "how are you"}]}
    status, answer, _ = await invoke(client, emulator.endpoint_url("chat-ro"), token, body)
    assert status == 200
    assert answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": "echo: how are you"}
    assert answer["model"] == "chat-ro-1"


async def _sse_events(resp: aiohttp.ClientResponse) -> AsyncIterator[str]:
    async for line in resp.content:
        text = line.decode().strip()
        if text:
            assert text.startswith("data: ")
            yield text[len("data: ") :]


async def test_chat_streams_one_event_per_word_then_done(emulator: Emulator, client: aiohttp.ClientSession) -> None:
    token = await data_plane_token(client, emulator, "chat-ro")
    words = "tell me more about the emulated workspace and its data plane please"
    body = {"messages": [{"role": "user", "content": words}], "stream": True}
    events: list[str] = []
    async with client.post(emulator.endpoint_url("chat-ro"), json=body, headers=bearer(token)) as resp:
        assert resp.status == 200
        assert resp.content_type == "text/event-stream"
        assert resp.headers["served-model-name"] == "chat-ro-1"
        async for event in _sse_events(resp):
            if not events:
                # The first event arrived while the handler is still streaming: it was flushed.
                assert emulator.counters.snapshot()["invocations_in_flight"] == 1
            events.append(event)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert [c["object"] for c in chunks] == ["chat.completion.chunk"] * 13
    assert "".join(c["choices"][0]["delta"]["content"] for c in chunks) == "echo: " + words
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * 12 + ["stop"]
    assert emulator.counters.snapshot()["invocations"] == {"chat-ro": {"200": 1}}


async def test_served_models_path_form(emulator: Emulator, client: aiohttp.ClientSession) -> None:
    token = await data_plane_token(client, emulator, "fraud-ro")
    url = emulator.endpoint_url("fraud-ro").replace("/invocations", "/served-models/fraud-ro-1/invocations")
    status, _, headers = await invoke(client, url, token, {"inputs": [1]})
    assert (status, headers["served-model-name"]) == (200, "fraud-ro-1")
    missing = url.replace("fraud-ro-1", "fraud-ro-9")
    status, answer, _ = await invoke(client, missing, token, {"inputs": [1]})
    assert (status, answer["error_code"]) == (404, "RESOURCE_DOES_NOT_EXIST")


async def test_several_served_models() -> None:
    from proxy.emulator import EmulatorSettings, EndpointSpec

    spec = EndpointSpec("split", "custom", served_models=("champion", "challenger"))
    async with Emulator(EmulatorSettings(endpoints=[spec])) as emu:
        connector = aiohttp.TCPConnector(ssl=emu.client_ssl_context())
        async with aiohttp.ClientSession(connector=connector) as session:
            token = await data_plane_token(session, emu, "split")
            url = emu.endpoint_url("split")
            _, _, default = await invoke(session, url, token, {"inputs": [1]})
            challenger = url.replace("/invocations", "/served-models/challenger/invocations")
            _, _, chosen = await invoke(session, challenger, token, {"inputs": [1]})
    assert (default["served-model-name"], chosen["served-model-name"]) == ("champion", "challenger")


async def test_token_rules(emulator: Emulator, client: aiohttp.ClientSession) -> None:
    url = emulator.endpoint_url("fraud-ro")
    body = {"inputs": [1]}
    cp = await workspace_token(client, emulator)
    cases: list[tuple[str | None, int, str]] = [
        (None, 401, "Missing credentials"),
        ("garbage", 401, "Invalid access token"),
        (cp, 401, "Missing authorization details"),
        (await data_plane_token(client, emulator, "chat-ro"), 403, "do not grant query access"),
    ]
    emulator.faults.dp_token_ttl = 30
    cases.append((await data_plane_token(client, emulator, "fraud-ro"), 401, "expiring within 30 seconds"))
    emulator.faults.dp_token_ttl = 0
    cases.append((await data_plane_token(client, emulator, "fraud-ro"), 401, "token expired"))
    for token, status, fragment in cases:
        code, answer, _ = await invoke(client, url, token, body)
        assert code == status, (token, answer)
        assert answer["error_code"] == ("PERMISSION_DENIED" if status == 403 else "UNAUTHENTICATED")
        assert fragment in answer["message"]
    assert emulator.counters.snapshot()["invocations"] == {"fraud-ro": {"401": 5, "403": 1}}


async def test_expiring_message_is_the_real_text(emulator: Emulator, client: aiohttp.ClientSession) -> None:
    emulator.faults.dp_token_ttl = 20
    token = await data_plane_token(client, emulator, "fraud-ro")
    _, answer, _ = await invoke(client, emulator.endpoint_url("fraud-ro"), token, {"inputs": [1]})
    assert answer == {
        "error_code": "UNAUTHENTICATED",
        "message": "Token is expiring within 30 seconds. (token expired)",
    }


async def test_oversized_body_is_413_by_content_length(emulator: Emulator, client: aiohttp.ClientSession) -> None:
    token = await data_plane_token(client, emulator, "fraud-ro")
    body = b'{"inputs": "' + b"x" * (16 * 1024 * 1024) + b'"}'
    headers = {**bearer(token), "Content-Type": "application/json"}
    async with client.post(emulator.endpoint_url("fraud-ro"), data=io.BytesIO(body), headers=headers) as resp:
        assert resp.request_info.headers["Content-Length"] == str(len(body))
        assert resp.status == 413
        assert (await resp.json())["error_code"] == "BAD_REQUEST"


async def test_oversized_chunked_body_is_413_while_reading(emulator: Emulator, client: aiohttp.ClientSession) -> None:
    token = await data_plane_token(client, emulator, "fraud-ro")

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(17):
            yield b" " * (1024 * 1024)

    headers = {**bearer(token), "Content-Type": "application/json"}
    async with client.post(emulator.endpoint_url("fraud-ro"), data=chunks(), headers=headers) as resp:
        assert resp.status == 413


async def test_a_body_just_under_the_limit_is_accepted(emulator: Emulator, client: aiohttp.ClientSession) -> None:
    token = await data_plane_token(client, emulator, "fraud-ro")
    body = b'{"inputs": 7}' + b" " * (16 * 1024 * 1024 - 13)
    headers = {**bearer(token), "Content-Type": "application/json"}
    async with client.post(emulator.endpoint_url("fraud-ro"), data=io.BytesIO(body), headers=headers) as resp:
        assert (resp.status, await resp.json()) == (200, {"predictions": [7]})


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"{not json", "valid JSON"),
        (b"{}", "exactly one of the input fields"),
        (b'{"dataframe_records": [], "inputs": []}', "Received dictionary with input fields"),
        (b"[1, 2]", "Received a list"),
        (b'"text"', "unexpected input type"),
        (b'{"instances": 5}', "must be a list"),
    ],
)
async def test_bad_input_is_400_with_mlflow_text(
    emulator: Emulator, client: aiohttp.ClientSession, data: bytes, fragment: str
) -> None:
    token = await data_plane_token(client, emulator, "fraud-ro")
    headers = {**bearer(token), "Content-Type": "application/json"}
    async with client.post(emulator.endpoint_url("fraud-ro"), data=data, headers=headers) as resp:
        assert resp.status == 400
        body = await resp.json()
    assert body["error_code"] == "BAD_REQUEST"
    assert fragment in body["message"]


@pytest.mark.parametrize(
    ("name", "body"),
    [
        ("chat-ro", {"inputs": [1]}),
        ("chat-ro", {"messages": "hello"}),
        ("features-ro", {"instances": [1]}),
        ("features-ro", {"dataframe_records": [1]}),
    ],
)
async def test_bad_input_for_chat_and_features(
    emulator: Emulator, client: aiohttp.ClientSession, name: str, body: dict[str, Any]
) -> None:
    token = await data_plane_token(client, emulator, name)
    status, answer, _ = await invoke(client, emulator.endpoint_url(name), token, body)
    assert (status, answer["error_code"]) == (400, "BAD_REQUEST")


async def test_wrong_content_type_is_415(emulator: Emulator, client: aiohttp.ClientSession) -> None:
    token = await data_plane_token(client, emulator, "fraud-ro")
    headers = {**bearer(token), "Content-Type": "text/csv"}
    async with client.post(emulator.endpoint_url("fraud-ro"), data=b"a,b\n1,2", headers=headers) as resp:
        assert resp.status == 415
        assert "content types" in (await resp.json())["message"]


async def test_paths_that_do_not_name_the_port_s_endpoint_are_404(
    emulator: Emulator, client: aiohttp.ClientSession
) -> None:
    token = await data_plane_token(client, emulator, "fraud-ro")
    url = emulator.endpoint_url("fraud-ro")
    for wrong in (
        url.replace(emulator.settings.workspace_id, "999"),
        url.replace("/fraud-ro/", "/chat-ro/"),
    ):
        status, answer, _ = await invoke(client, wrong, token, {"inputs": [1]})
        assert (status, answer["error_code"]) == (404, "RESOURCE_DOES_NOT_EXIST")
    base = url.split("/1444828305810485/")[0]
    async with client.post(base + "/serving-endpoints/fraud-ro/invocations", headers=bearer(token)) as resp:
        assert resp.status == 404
        assert (await resp.json())["error_code"] == "ENDPOINT_NOT_FOUND"
    async with client.get(url, headers=bearer(token)) as resp:
        assert resp.status == 405
        assert resp.content_type == "application/json"


async def test_plain_endpoint_answers_on_the_workspace_host(emulator: Emulator, client: aiohttp.ClientSession) -> None:
    url = emulator.endpoint_url("plain-model")
    assert url == emulator.workspace_url + "/serving-endpoints/plain-model/invocations"
    cp = await workspace_token(client, emulator)
    status, answer, headers = await invoke(client, url, cp, {"inputs": [2, 3]})
    assert (status, answer, headers["served-model-name"]) == (200, {"predictions": [2, 3]}, "plain-model-1")
    served = url.replace("/invocations", "/served-models/plain-model-1/invocations")
    assert (await invoke(client, served, cp, {"inputs": [1]}))[0] == 200
    other = await data_plane_token(client, emulator, "fraud-ro")
    assert (await invoke(client, url, other, {"inputs": [1]}))[0] == 403
    assert (await invoke(client, url, None, {"inputs": [1]}))[0] == 401
    scoped_form = {
        "grant_type": "client_credentials",
        "authorization_details": json.dumps(
            [
                {
                    "type": "workspace_permission",
                    "object_type": "serving-endpoints",
                    "object_path": f"/serving-endpoints/{emulator.endpoint_id('plain-model')}",
                    "actions": ["query_inference_endpoint"],
                }
            ]
        ),
    }
    _, scoped = await post_token(client, emulator, scoped_form, basic(emulator.client_id, emulator.client_secret))
    assert (await invoke(client, url, scoped["access_token"], {"inputs": [1]}))[0] == 200


async def test_route_optimized_endpoint_refuses_the_workspace_path(
    emulator: Emulator, client: aiohttp.ClientSession
) -> None:
    cp = await workspace_token(client, emulator)
    url = emulator.workspace_url + "/serving-endpoints/fraud-ro/invocations"
    status, answer, _ = await invoke(client, url, cp, {"inputs": [1]})
    assert status == 400
    assert emulator.endpoint_url("fraud-ro") in answer["message"]
    status, answer, _ = await invoke(client, emulator.workspace_url + "/serving-endpoints/nope/invocations", cp, {})
    assert (status, answer["error_code"]) == (404, "RESOURCE_DOES_NOT_EXIST")


async def test_concurrent_invocations_are_counted(emulator: Emulator, client: aiohttp.ClientSession) -> None:
    token = await data_plane_token(client, emulator, "fraud-ro")
    url = emulator.endpoint_url("fraud-ro")
    results = await asyncio.gather(*(invoke(client, url, token, {"inputs": [i]}) for i in range(20)))
    assert sorted(r[1]["predictions"][0] for r in results) == list(range(20))
    snapshot = emulator.counters.snapshot()
    assert snapshot["invocations"] == {"fraud-ro": {"200": 20}}
    assert snapshot["invocations_in_flight"] == 0


async def test_echo_endpoint_answers_the_body_byte_for_byte() -> None:
    from proxy.emulator import EmulatorSettings, EndpointSpec

    async with Emulator(EmulatorSettings(endpoints=[EndpointSpec("echo", "echo")])) as emu:
        connector = aiohttp.TCPConnector(ssl=emu.client_ssl_context())
        async with aiohttp.ClientSession(connector=connector) as session:
            token = await data_plane_token(session, emu, "echo")
            for body in (b"", b"{not json", bytes(range(256)) * 1000):
                headers = {**bearer(token), "Content-Type": "image/png"}
                async with session.post(emu.endpoint_url("echo"), data=body, headers=headers) as resp:
                    assert resp.status == 200
                    assert resp.headers["Content-Type"] == "application/octet-stream"
                    assert resp.headers["served-model-name"] == "echo-1"
                    assert await resp.read() == body
        assert emu.counters.snapshot()["invocations"]["echo"] == {"200": 3}


async def test_answer_bytes_knob_streams_filler_and_counts_it(
    emulator: Emulator, client: aiohttp.ClientSession
) -> None:
    token = await data_plane_token(client, emulator, "fraud-ro")
    size = 3 * 65536 + 7
    async with client.post(
        emulator.workspace_url + "/_emulator/faults", json={"answer_bytes": {"fraud-ro": size}}
    ) as resp:
        assert (await resp.json())["answer_bytes"] == {"fraud-ro": size}
    headers = {**bearer(token), "Content-Type": "application/json"}
    async with client.post(emulator.endpoint_url("fraud-ro"), data=b'{"inputs": [1]}', headers=headers) as resp:
        assert resp.status == 200
        assert resp.headers["Transfer-Encoding"] == "chunked"
        assert await resp.read() == b"x" * size
    assert emulator.counters.snapshot()["answer_bytes_sent"] == size
    emulator.faults.answer_bytes.clear()
    assert (await invoke(client, emulator.endpoint_url("fraud-ro"), token, {"inputs": [1]}))[1] == {"predictions": [1]}
