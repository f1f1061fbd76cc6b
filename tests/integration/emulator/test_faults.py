"""Every fault knob, through the Python API and through the admin routes."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import urlsplit

import aiohttp
import pytest

from proxy.emulator import Emulator
from proxy.emulator.grants import JWT_BEARER

from .conftest import basic, bearer, data_plane_token, invoke, post_token, workspace_token

BODY = {"inputs": [1]}


async def _admin(
    client: aiohttp.ClientSession, emu: Emulator, path: str, payload: object = None
) -> tuple[int, dict[str, object]]:
    method = "GET" if payload is None else "POST"
    async with client.request(method, emu.workspace_url + "/_emulator/" + path, json=payload) as resp:
        return resp.status, await resp.json()


async def _eventually(check: Callable[[], bool], limit: float = 5.0) -> None:
    deadline = time.monotonic() + limit
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


# --- latency ------------------------------------------------------------------------------------


async def test_latency_per_endpoint(emulator: Emulator, client: aiohttp.ClientSession) -> None:
    fraud = await data_plane_token(client, emulator, "fraud-ro")
    emulator.faults.latency["fraud-ro"] = 0.3
    started = time.monotonic()
    assert (await invoke(client, emulator.endpoint_url("fraud-ro"), fraud, BODY))[0] == 200
    assert time.monotonic() - started >= 0.3


async def test_latency_from_the_endpoint_spec_and_the_admin_route(client: aiohttp.ClientSession) -> None:
    from proxy.emulator import EmulatorSettings, EndpointSpec

    settings = EmulatorSettings(endpoints=[EndpointSpec("slow", "custom", latency=0.2)])
    async with Emulator(settings) as emu:
        connector = aiohttp.TCPConnector(ssl=emu.client_ssl_context())
        async with aiohttp.ClientSession(connector=connector) as session:
            token = await data_plane_token(session, emu, "slow")
            started = time.monotonic()
            await invoke(session, emu.endpoint_url("slow"), token, BODY)
            assert time.monotonic() - started >= 0.2
            status, faults = await _admin(session, emu, "faults", {"latency": {"slow": 0.4}})
            assert (status, faults["latency"]) == (200, {"slow": 0.4})
            started = time.monotonic()
            await invoke(session, emu.endpoint_url("slow"), token, BODY)
            assert time.monotonic() - started >= 0.4


# --- tokens -------------------------------------------------------------------------------------


async def test_token_ttls(emulator: Emulator, client: aiohttp.ClientSession) -> None:
    await _admin(client, emulator, "faults", {"cp_token_ttl": 45, "dp_token_ttl": 600.5})
    status, cp = await post_token(
        client,
        emulator,
        {"grant_type": "client_credentials", "client_id": "sidecar-sp", "client_secret": "emulated-secret"},
    )
    assert (status, cp["expires_in"]) == (200, 45)
    form = {
        "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
        "assertion": cp["access_token"],
        "authorization_details": emulator.authorization_details("fraud-ro"),
    }
    _, dp = await post_token(client, emulator, form)
    assert dp["expires_in"] == 600


async def test_ttls_from_settings() -> None:
    from proxy.emulator import EmulatorSettings

    async with Emulator(EmulatorSettings(cp_token_ttl=120, dp_token_ttl=90)) as emu:
        assert (emu.faults.cp_token_ttl, emu.faults.dp_token_ttl) == (120, 90)


async def test_token_latency(emulator: Emulator, client: aiohttp.ClientSession) -> None:
    emulator.faults.token_latency = 0.3
    started = time.monotonic()
    await workspace_token(client, emulator)
    assert time.monotonic() - started >= 0.3


async def test_token_outage(emulator: Emulator, client: aiohttp.ClientSession) -> None:
    await _admin(client, emulator, "faults", {"token_outage": True})
    status, body = await post_token(client, emulator, {"grant_type": "client_credentials"})
    assert status == 503
    assert body["error"] == "temporarily_unavailable"
    await _admin(client, emulator, "faults", {"token_outage": False})
    await workspace_token(client, emulator)
    assert emulator.counters.snapshot()["token_failures"] == {"temporarily_unavailable": 1}


async def test_revoke_all_tokens(emulator: Emulator, client: aiohttp.ClientSession) -> None:
    dp = await data_plane_token(client, emulator, "fraud-ro")
    cp = await workspace_token(client, emulator)
    status, _ = await _admin(client, emulator, "tokens/revoke", {})
    assert status == 200
    code, answer, _ = await invoke(client, emulator.endpoint_url("fraud-ro"), dp, BODY)
    assert (code, answer["message"]) == (401, "Invalid access token. (token has been revoked)")
    async with client.get(emulator.workspace_url + "/api/2.0/serving-endpoints/fraud-ro", headers=bearer(cp)) as resp:
        assert resp.status == 401
    fresh = await data_plane_token(client, emulator, "fraud-ro")
    assert (await invoke(client, emulator.endpoint_url("fraud-ro"), fresh, BODY))[0] == 200


# --- planned failures ---------------------------------------------------------------------------


async def test_fail_next_429_with_and_without_retry_after(emulator: Emulator, client: aiohttp.ClientSession) -> None:
    token = await data_plane_token(client, emulator, "fraud-ro")
    url = emulator.endpoint_url("fraud-ro")
    emulator.fail_next(1, 429, retry_after=2)
    emulator.fail_next(1, 429)
    first = await invoke(client, url, token, BODY)
    second = await invoke(client, url, token, BODY)
    third = await invoke(client, url, token, BODY)
    assert (first[0], first[1]["error_code"], first[2]["Retry-After"]) == (429, "REQUEST_LIMIT_EXCEEDED", "2")
    assert (second[0], "Retry-After" in second[2]) == (429, False)
    assert third[0] == 200
    assert emulator.counters.snapshot()["invocations"] == {"fraud-ro": {"429": 2, "200": 1}}


async def test_fail_next_503_for_one_endpoint_through_the_admin_route(
    emulator: Emulator, client: aiohttp.ClientSession
) -> None:
    status, faults = await _admin(client, emulator, "fail-next", {"count": 2, "status": 503, "endpoint": "chat-ro"})
    assert status == 200
    assert faults["planned_failures"] == [{"remaining": 2, "status": 503, "retry_after": None, "endpoint": "chat-ro"}]
    fraud = await data_plane_token(client, emulator, "fraud-ro")
    chat = await data_plane_token(client, emulator, "chat-ro")
    assert (await invoke(client, emulator.endpoint_url("fraud-ro"), fraud, BODY))[0] == 200
    chat_body = {"messages": [{"role": "user", "content": "x"}]}
    statuses = [(await invoke(client, emulator.endpoint_url("chat-ro"), chat, chat_body))[0] for _ in range(3)]
    assert statuses == [503, 503, 200]
    assert emulator.faults.planned_failures == []


async def test_fail_next_applies_to_plain_endpoints(emulator: Emulator, client: aiohttp.ClientSession) -> None:
    emulator.fail_next(1, 503, retry_after=1)
    cp = await workspace_token(client, emulator)
    status, body, headers = await invoke(client, emulator.endpoint_url("plain-model"), cp, BODY)
    assert (status, body["error_code"], headers["Retry-After"]) == (503, "TEMPORARILY_UNAVAILABLE", "1")


async def test_failures_do_not_skip_authentication(emulator: Emulator, client: aiohttp.ClientSession) -> None:
    emulator.fail_next(1, 429)
    assert (await invoke(client, emulator.endpoint_url("fraud-ro"), None, BODY))[0] == 401
    assert len(emulator.faults.planned_failures) == 1


@pytest.mark.parametrize(
    "payload",
    [
        {"count": 0, "status": 429},
        {"count": 1, "status": 418},
        {"count": 1, "status": 429, "retry_after": "soon"},
        {"count": 1, "status": 429, "colour": "red"},
        {"count": 1, "status": 429, "endpoint": 5},
        [1, 2],
    ],
)
async def test_bad_fail_next_requests(emulator: Emulator, client: aiohttp.ClientSession, payload: object) -> None:
    status, body = await _admin(client, emulator, "fail-next", payload)
    assert (status, body["error_code"]) == (400, "INVALID_PARAMETER_VALUE")


# --- knob patches -------------------------------------------------------------------------------


async def test_faults_patch_merges_and_validates(emulator: Emulator, client: aiohttp.ClientSession) -> None:
    await _admin(client, emulator, "faults", {"latency": {"fraud-ro": 0.1, "chat-ro": 0.2}})
    status, faults = await _admin(client, emulator, "faults", {"latency": {"chat-ro": None}, "idle_close_after": 5})
    assert status == 200
    assert faults["latency"] == {"fraud-ro": 0.1}
    assert faults["idle_close_after"] == 5
    for bad in ({"token_outage": "yes"}, {"nope": 1}, {"cp_token_ttl": -1}, {"close_after_requests": 0}):
        status, body = await _admin(client, emulator, "faults", bad)
        assert (status, body["error_code"]) == (400, "INVALID_PARAMETER_VALUE")
    async with client.post(emulator.workspace_url + "/_emulator/faults", data=b"{oops") as resp:
        assert resp.status == 400
    status, faults = await _admin(client, emulator, "faults")
    assert faults["idle_close_after"] == 5
    assert faults["token_outage"] is False


async def test_metadata_overrides_patch_the_metadata_answer(emulator: Emulator, client: aiohttp.ClientSession) -> None:
    url = emulator.workspace_url + "/api/2.0/serving-endpoints/fraud-ro"
    headers = bearer(await workspace_token(client, emulator))
    patch = {"fraud-ro": {"data_plane_info": {"query_info": {"endpoint_url": "http://127.0.0.1:1/x"}}, "state": "odd"}}
    status, faults = await _admin(client, emulator, "faults", {"metadata_overrides": patch})
    assert (status, faults["metadata_overrides"]) == (200, patch)
    async with client.get(url, headers=headers) as resp:
        doc = await resp.json()
    assert doc["state"] == "odd"
    assert doc["data_plane_info"]["query_info"]["endpoint_url"] == "http://127.0.0.1:1/x"
    assert doc["data_plane_info"]["query_info"]["authorization_details"]  # merged, not replaced
    emulator.faults.metadata_overrides["fraud-ro"] = {
        "data_plane_info": {"query_info": {"authorization_details": None}}
    }
    async with client.get(url, headers=headers) as resp:
        assert "authorization_details" not in (await resp.json())["data_plane_info"]["query_info"]
    status, body = await _admin(client, emulator, "faults", {"metadata_overrides": {"fraud-ro": 3}})
    assert (status, body["error_code"]) == (400, "INVALID_PARAMETER_VALUE")
    await _admin(client, emulator, "faults", {"metadata_overrides": None})
    async with client.get(url, headers=headers) as resp:
        assert (await resp.json())["state"]["ready"] == "READY"


async def test_token_answer_override_patches_answers_by_kind(emulator: Emulator, client: aiohttp.ClientSession) -> None:
    patch = {"workspace": {"expires_in": -5, "scope": None}, "error": {"error_description": "patched"}}
    status, faults = await _admin(client, emulator, "faults", {"token_answer_override": patch})
    assert (status, faults["token_answer_override"]) == (200, patch)
    cp_form = {"grant_type": "client_credentials", "scope": "all-apis"}
    status, body = await post_token(client, emulator, cp_form, basic(emulator.client_id, emulator.client_secret))
    assert status == 200 and body["expires_in"] == -5 and "scope" not in body and body["access_token"]
    status, body = await post_token(client, emulator, cp_form, basic(emulator.client_id, "wrong"))
    assert (status, body["error"], body["error_description"]) == (401, "invalid_client", "patched")
    emulator.faults.token_answer_override = {"data_plane": {"expires_in": float("nan")}}
    async with client.post(
        emulator.token_endpoint,
        data={
            "grant_type": JWT_BEARER,
            "assertion": await workspace_token(client, emulator),
            "authorization_details": emulator.authorization_details("fraud-ro"),
        },
    ) as resp:
        assert b'"expires_in":NaN' in await resp.read()
    for bad in ({"nope": {}}, ["workspace"], {"workspace": {"x": 1}, "other": 1}):
        status, body = await _admin(client, emulator, "faults", {"token_answer_override": bad})
        assert (status, body["error_code"]) == (400, "INVALID_PARAMETER_VALUE")
    await _admin(client, emulator, "faults", {"token_answer_override": None})
    assert emulator.faults.token_answer_override == {}


async def test_token_answer_raw_answers_the_exact_text(emulator: Emulator, client: aiohttp.ClientSession) -> None:
    raw = '{"access_token": null, "token_type": "Bearer", "expires_in": 3600}'
    status, _ = await _admin(client, emulator, "faults", {"token_answer_raw": {"workspace": raw}})
    assert status == 200
    form = {"grant_type": "client_credentials", "scope": "all-apis"}
    async with client.post(
        emulator.token_endpoint, data=form, headers=basic(emulator.client_id, emulator.client_secret)
    ) as resp:
        assert (resp.status, await resp.text()) == (200, raw)
    status, body = await _admin(client, emulator, "faults", {"token_answer_raw": {"workspace": 3}})
    assert (status, body["error_code"]) == (400, "INVALID_PARAMETER_VALUE")
    await _admin(client, emulator, "faults", {"token_answer_raw": None})
    assert await workspace_token(client, emulator)


async def test_the_accepted_client_secret_can_change_at_run_time(
    emulator: Emulator, client: aiohttp.ClientSession
) -> None:
    form = {"grant_type": "client_credentials", "scope": "all-apis"}
    status, _ = await post_token(client, emulator, form, basic(emulator.client_id, "fixed-secret-1"))
    assert status == 401
    status, body = await _admin(client, emulator, f"clients/{emulator.client_id}", {"secret": "fixed-secret-1"})
    assert (status, body) == (200, {"client_id": emulator.client_id})
    status, _ = await post_token(client, emulator, form, basic(emulator.client_id, "fixed-secret-1"))
    assert status == 200 and emulator.client_secret == "fixed-secret-1"
    emulator.set_client_secret(emulator.client_id, "fixed-secret-2")
    status, _ = await post_token(client, emulator, form, basic(emulator.client_id, "fixed-secret-1"))
    assert status == 401
    status, body = await _admin(client, emulator, f"clients/{emulator.client_id}", {"secret": ""})
    assert (status, body["error_code"]) == (400, "INVALID_PARAMETER_VALUE")


# --- endpoint recreation ------------------------------------------------------------------------


async def test_recreate_endpoint(emulator: Emulator, client: aiohttp.ClientSession) -> None:
    old_id, old_url = emulator.endpoint_id("fraud-ro"), emulator.endpoint_url("fraud-ro")
    old_token = await data_plane_token(client, emulator, "fraud-ro")
    new_id = emulator.recreate_endpoint("fraud-ro")
    new_url = emulator.endpoint_url("fraud-ro")
    assert new_id != old_id
    assert new_id == emulator.endpoint_id("fraud-ro")
    assert urlsplit(new_url).port != urlsplit(old_url).port
    status, answer, _ = await invoke(client, old_url, old_token, BODY)
    assert (status, answer["error_code"]) == (404, "RESOURCE_DOES_NOT_EXIST")
    status, answer, _ = await invoke(client, new_url, old_token, BODY)
    assert (status, answer["error_code"]) == (403, "PERMISSION_DENIED")
    cp = await workspace_token(client, emulator)
    async with client.get(emulator.workspace_url + "/api/2.0/serving-endpoints/fraud-ro", headers=bearer(cp)) as resp:
        meta = await resp.json()
    assert (meta["id"], meta["endpoint_url"]) == (new_id, new_url)
    new_token = await data_plane_token(client, emulator, "fraud-ro")
    assert (await invoke(client, new_url, new_token, BODY))[0] == 200
    form = {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": cp}
    old_details = (
        '[{"type":"workspace_permission","object_type":"serving-endpoints",'
        f'"object_path":"/serving-endpoints/{old_id}","actions":["query_inference_endpoint"]}}]'
    )
    status, body = await post_token(client, emulator, {**form, "authorization_details": old_details})
    assert (status, body["error"]) == (400, "invalid_authorization_details")


async def test_recreate_through_the_admin_route(emulator: Emulator, client: aiohttp.ClientSession) -> None:
    old_id = emulator.endpoint_id("plain-model")
    status, body = await _admin(client, emulator, "endpoints/plain-model/recreate", {})
    assert status == 200
    assert body["id"] == emulator.endpoint_id("plain-model") != old_id
    assert body["endpoint_url"] == emulator.endpoint_url("plain-model")
    status, body = await _admin(client, emulator, "endpoints/ghost/recreate", {})
    assert (status, body["error_code"]) == (404, "RESOURCE_DOES_NOT_EXIST")
    status, listing = await _admin(client, emulator, "endpoints")
    assert [e["name"] for e in listing["endpoints"]] == [
        "fraud-ro",
        "features-ro",
        "chat-ro",
        "embed-ro",
        "plain-model",
    ]


async def test_recreate_from_another_thread(emulator: Emulator, client: aiohttp.ClientSession) -> None:
    await asyncio.to_thread(emulator.recreate_endpoint, "chat-ro")
    token = await data_plane_token(client, emulator, "chat-ro")
    body = {"messages": [{"role": "user", "content": "hi"}]}
    assert (await invoke(client, emulator.endpoint_url("chat-ro"), token, body))[0] == 200


# --- connections --------------------------------------------------------------------------------


class RawConnection:
    """One HTTP/1.1 keep-alive connection over TLS, to see exactly what the server does to it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, emu: Emulator, url: str) -> RawConnection:
        parts = urlsplit(url)
        reader, writer = await asyncio.open_connection(
            parts.hostname, parts.port, ssl=emu.client_ssl_context(), server_hostname=parts.hostname
        )
        return cls(reader, writer)

    async def post(self, url: str, token: str, body: bytes = b'{"inputs": [1]}') -> int | None:
        """Send one request; the status, or None when the connection ended before any byte."""
        path = urlsplit(url).path
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode() + body)
        await self.writer.drain()
        try:
            status_line = await asyncio.wait_for(self.reader.readline(), 5)
        except (ConnectionError, OSError):
            return None
        if not status_line:
            return None
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        await self.reader.readexactly(length)
        return int(status_line.split()[1])

    async def closed_by_peer(self) -> bool:
        """True once the server closed the connection; False if it stays open for 5 s."""
        try:
            return await asyncio.wait_for(self.reader.read(1), 5) == b""
        except TimeoutError:
            return False
        except (ConnectionError, OSError):
            return True

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


@pytest.fixture
async def raw(emulator: Emulator) -> AsyncIterator[Callable[[str], Awaitable[RawConnection]]]:
    opened: list[RawConnection] = []

    async def connect(url: str) -> RawConnection:
        conn = await RawConnection.open(emulator, url)
        opened.append(conn)
        return conn

    yield connect
    for conn in opened:
        await conn.close()


async def test_close_after_requests_drops_without_a_response(
    emulator: Emulator, client: aiohttp.ClientSession, raw: Callable[[str], Awaitable[RawConnection]]
) -> None:
    token = await data_plane_token(client, emulator, "fraud-ro")
    url = emulator.endpoint_url("fraud-ro")
    await _admin(client, emulator, "faults", {"close_after_requests": 2})
    conn = await raw(url)
    assert [await conn.post(url, token), await conn.post(url, token)] == [200, 200]
    assert await conn.post(url, token) is None
    fresh = await raw(url)
    assert await fresh.post(url, token) == 200
    snapshot = emulator.counters.snapshot()
    assert snapshot["dropped_connections"] == 1
    assert snapshot["invocations"] == {"fraud-ro": {"200": 3}}
    assert snapshot["data_plane_connections"] == 2


async def test_close_after_requests_spares_the_control_plane_unless_asked(
    emulator: Emulator, client: aiohttp.ClientSession, raw: Callable[[str], Awaitable[RawConnection]]
) -> None:
    cp = await workspace_token(client, emulator)
    url = emulator.endpoint_url("plain-model")
    emulator.faults.close_after_requests = 1
    conn = await raw(url)
    assert [await conn.post(url, cp), await conn.post(url, cp)] == [200, 200]
    emulator.faults.connection_faults_on_control_plane = True
    second = await raw(url)
    assert await second.post(url, cp) == 200
    assert await second.post(url, cp) is None


async def test_idle_connections_are_closed(
    emulator: Emulator, client: aiohttp.ClientSession, raw: Callable[[str], Awaitable[RawConnection]]
) -> None:
    token = await data_plane_token(client, emulator, "fraud-ro")
    url = emulator.endpoint_url("fraud-ro")
    await _admin(client, emulator, "faults", {"idle_close_after": 0.5})
    conn = await raw(url)
    assert [await conn.post(url, token), await conn.post(url, token)] == [200, 200]
    assert await conn.closed_by_peer()
    assert emulator.counters.snapshot()["idle_closed_connections"] == 1


async def test_busy_connections_are_not_idle(
    emulator: Emulator, client: aiohttp.ClientSession, raw: Callable[[str], Awaitable[RawConnection]]
) -> None:
    token = await data_plane_token(client, emulator, "fraud-ro")
    url = emulator.endpoint_url("fraud-ro")
    emulator.faults.idle_close_after = 0.1
    emulator.faults.latency["fraud-ro"] = 0.4
    conn = await raw(url)
    assert await conn.post(url, token) == 200


async def test_invocations_cancelled_when_the_client_goes_away(
    emulator: Emulator, client: aiohttp.ClientSession
) -> None:
    token = await data_plane_token(client, emulator, "fraud-ro")
    emulator.faults.latency["fraud-ro"] = 10
    task = asyncio.create_task(invoke(client, emulator.endpoint_url("fraud-ro"), token, BODY))
    await _eventually(lambda: emulator.counters.snapshot()["invocations_in_flight"] == 1)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await _eventually(lambda: emulator.counters.snapshot()["invocations_cancelled"] == 1)
    snapshot = emulator.counters.snapshot()
    assert snapshot["invocations_in_flight"] == 0
    assert snapshot["invocations"] == {}


async def test_cancelled_stream_is_counted(emulator: Emulator, client: aiohttp.ClientSession) -> None:
    token = await data_plane_token(client, emulator, "chat-ro")
    body = {"messages": [{"role": "user", "content": " ".join(["word"] * 40)}], "stream": True}
    async with client.post(emulator.endpoint_url("chat-ro"), json=body, headers=bearer(token)) as resp:
        await resp.content.readline()
        resp.close()
    await _eventually(lambda: emulator.counters.snapshot()["invocations_cancelled"] == 1)
    assert emulator.counters.snapshot()["invocations"] == {"chat-ro": {"200": 1}}


# --- counters -----------------------------------------------------------------------------------


async def test_counters_route_and_reset(emulator: Emulator, client: aiohttp.ClientSession) -> None:
    token = await data_plane_token(client, emulator, "fraud-ro")
    await invoke(client, emulator.endpoint_url("fraud-ro"), token, BODY)
    status, counters = await _admin(client, emulator, "counters")
    assert status == 200
    assert counters == emulator.counters.snapshot()
    assert counters["invocations"] == {"fraud-ro": {"200": 1}}
    assert counters["control_plane_connections"] >= 1
    assert counters["data_plane_connections"] == 1
    status, counters = await _admin(client, emulator, "counters/reset", {})
    assert counters["invocations"] == {}
    assert counters["token_grants"] == {"client_credentials": 0, "jwt_bearer": 0, "token_exchange": 0}
