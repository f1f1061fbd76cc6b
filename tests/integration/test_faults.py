"""Fault suite: the emulator's knobs against the sidecar. Each test asserts what the caller saw and what
the emulator counted (no errors the caller could not have avoided, no duplicate inference)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from proxy.app import Sidecar
from proxy.emulator import Emulator, EmulatorSettings, EndpointSpec, default_endpoints
from tests.integration.conftest import SidecarFactory, url

RECORDS = {"dataframe_records": [{"a": 1, "b": 2}]}
FRAUD = "/serving-endpoints/fraud-ro/invocations"


async def call(client: aiohttp.ClientSession, sidecar: Sidecar, path: str = FRAUD) -> tuple[int, dict[str, str], bytes]:
    async with client.post(url(sidecar, path), json=RECORDS) as resp:
        return resp.status, dict(resp.headers), await resp.read()


def statuses(emu: Emulator, endpoint: str = "fraud-ro") -> dict[str, int]:
    return dict(emu.counters.snapshot()["invocations"].get(endpoint, {}))


def retries(sidecar: Sidecar, reason: str) -> float:
    value = sidecar.metrics.registry.get_sample_value(
        "serving_sidecar_retries_total", {"endpoint": "fraud-ro", "reason": reason}
    )
    return value or 0.0


async def wait_for(predicate: object, seconds: float = 5.0) -> bool:
    for _ in range(int(seconds / 0.05)):
        if predicate():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.05)
    return bool(predicate())  # type: ignore[operator]


# --- stale connections -------------------------------------------------------------------------------


async def test_a_reset_after_the_request_was_written_is_not_sent_again(
    emu: Emulator, sidecar: Sidecar, client: aiohttp.ClientSession
) -> None:
    """The server read the request, then dropped the connection: the model may have run, so no second send."""
    assert (await call(client, sidecar))[0] == 200  # resolves, mints; the connection goes back to the pool
    emu.faults.close_after_requests = 1  # any request on an already-used connection is dropped unanswered
    status, _, body = await call(client, sidecar)  # the pool's warmest connection is the one just used
    assert status == 502, body
    assert b"BAD_GATEWAY" in body
    counted = emu.counters.snapshot()
    assert counted["dropped_connections"] == 1
    assert statuses(emu) == {"200": 1}
    assert not any(retries(sidecar, reason) for reason in ("connect_failed", "server_error", "timeout"))
    emu.faults.close_after_requests = None
    assert (await call(client, sidecar))[0] == 200  # the dropped connection left the pool


async def test_server_closing_idle_connections_never_surfaces(
    emu: Emulator, sidecar: Sidecar, client: aiohttp.ClientSession
) -> None:
    emu.faults.idle_close_after = 0.2
    for _ in range(4):
        assert (await call(client, sidecar))[0] == 200
        await asyncio.sleep(0.5)  # longer than the server's idle timeout
    assert emu.counters.snapshot()["idle_closed_connections"] >= 1
    assert statuses(emu) == {"200": 4}


# --- 429 and 503 -------------------------------------------------------------------------------------


async def test_429_with_retry_after_is_honoured(emu: Emulator, sidecar: Sidecar, client: aiohttp.ClientSession) -> None:
    await call(client, sidecar)
    emu.fail_next(1, 429, retry_after=1, endpoint="fraud-ro")
    started = time.monotonic()
    status, _, body = await call(client, sidecar)
    assert status == 200, body
    assert time.monotonic() - started >= 1.0  # waited as told
    assert statuses(emu) == {"200": 2, "429": 1}
    assert retries(sidecar, "throttled") == 1


async def test_503_without_retry_after_backs_off_and_succeeds(
    emu: Emulator, sidecar: Sidecar, client: aiohttp.ClientSession
) -> None:
    emu.fail_next(2, 503, endpoint="fraud-ro")
    status, _, body = await call(client, sidecar)
    assert status == 200, body
    assert statuses(emu) == {"503": 2, "200": 1}
    assert retries(sidecar, "unavailable") == 2


async def test_when_the_budget_is_spent_the_upstreams_own_answer_goes_back(
    emu: Emulator, sidecar: Sidecar, client: aiohttp.ClientSession
) -> None:
    emu.fail_next(1, 429, retry_after=60, endpoint="fraud-ro")  # longer than the 10 s budget
    status, headers, body = await call(client, sidecar)
    assert status == 429
    assert headers["Retry-After"] == "60"
    assert b"REQUEST_LIMIT_EXCEEDED" in body
    emu.fail_next(6, 503, endpoint="fraud-ro")
    status, _, _ = await call(client, sidecar)
    assert status == 503
    assert statuses(emu) == {"429": 1, "503": 5}  # 5 sends in all (the default), then the upstream's 503


# --- no duplicate inference --------------------------------------------------------------------------


@pytest.mark.parametrize("failure", [500, 502, 504])
async def test_unsafe_failures_are_not_retried_by_default(
    emu: Emulator, sidecar: Sidecar, client: aiohttp.ClientSession, failure: int
) -> None:
    emu.fail_next(1, failure, endpoint="fraud-ro")
    status, _, _ = await call(client, sidecar)
    assert status == failure
    assert statuses(emu) == {str(failure): 1}


async def test_unsafe_failures_are_retried_for_idempotent_endpoints(
    emu: Emulator, make_sidecar: SidecarFactory, client: aiohttp.ClientSession
) -> None:
    async with make_sidecar(idempotent_endpoint=["fraud-ro"]) as sidecar:
        emu.fail_next(1, 500, endpoint="fraud-ro")
        status, _, _ = await call(client, sidecar)
    assert status == 200
    assert statuses(emu) == {"500": 1, "200": 1}


async def test_read_timeout_is_504_and_not_retried(
    emu: Emulator, make_sidecar: SidecarFactory, client: aiohttp.ClientSession
) -> None:
    async with make_sidecar(first_byte_timeout=0.5) as sidecar:
        await call(client, sidecar)
        emu.faults.latency["fraud-ro"] = 2.0
        status, _, body = await call(client, sidecar)
        assert status == 504
        assert b"DEADLINE_EXCEEDED" in body
        assert await wait_for(lambda: emu.counters.snapshot()["invocations_in_flight"] == 0)
    counted = emu.counters.snapshot()
    assert counted["invocations_cancelled"] == 1  # one send, abandoned; never a second
    assert statuses(emu) == {"200": 1}


# --- 401 and recreated endpoints ----------------------------------------------------------------------


async def test_revoked_tokens_are_replaced_transparently(
    emu: Emulator, sidecar: Sidecar, client: aiohttp.ClientSession
) -> None:
    await call(client, sidecar)
    grants = emu.counters.snapshot()["token_grants"]
    emu.revoke_all_tokens()
    status, _, body = await call(client, sidecar)
    assert status == 200, body
    after = emu.counters.snapshot()["token_grants"]
    assert after["jwt_bearer"] == grants["jwt_bearer"] + 1
    assert after["client_credentials"] == grants["client_credentials"] + 1
    assert statuses(emu) == {"200": 2, "401": 1}
    assert retries(sidecar, "unauthorized") == 1


async def test_recreated_endpoint_is_re_resolved_and_retried_once(
    emu: Emulator, sidecar: Sidecar, client: aiohttp.ClientSession
) -> None:
    await call(client, sidecar)
    old_url = emu.endpoint_url("fraud-ro")
    emu.recreate_endpoint("fraud-ro")
    assert emu.endpoint_url("fraud-ro") != old_url
    reads = emu.counters.snapshot()["metadata_reads"]["fraud-ro"]
    status, _, body = await call(client, sidecar)
    assert status == 200, body
    assert emu.counters.snapshot()["metadata_reads"]["fraud-ro"] == reads + 1
    assert sidecar.resolver.cached("fraud-ro").url == emu.endpoint_url("fraud-ro")  # type: ignore[union-attr]
    assert retries(sidecar, "endpoint_recreated") == 1


async def test_concurrent_calls_that_hit_a_recreated_endpoint_all_succeed(
    emu: Emulator, sidecar: Sidecar, client: aiohttp.ClientSession
) -> None:
    await asyncio.gather(*(call(client, sidecar) for _ in range(20)))  # pools warm connections to the old host
    emu.recreate_endpoint("fraud-ro")
    results = await asyncio.gather(*(call(client, sidecar) for _ in range(20)))
    assert [status for status, _, _ in results] == [200] * 20  # none gets the old host's 404
    assert emu.counters.snapshot()["metadata_reads"]["fraud-ro"] == 2  # one re-resolution for all of them


async def test_a_call_waiting_out_a_429_while_its_endpoint_is_recreated_retries_on_the_new_one(
    emu: Emulator, sidecar: Sidecar, client: aiohttp.ClientSession
) -> None:
    await call(client, sidecar)
    emu.fail_next(1, 429, retry_after=1, endpoint="fraud-ro")
    waiting = asyncio.create_task(call(client, sidecar))
    assert await wait_for(lambda: statuses(emu).get("429") == 1)
    emu.recreate_endpoint("fraud-ro")
    assert (await call(client, sidecar))[0] == 200  # re-resolves and drops the old endpoint's token
    status, _, body = await waiting
    assert status == 200, body
    assert emu.counters.snapshot()["token_failures"] == {}  # no token was asked for the old endpoint


# --- token server outage ------------------------------------------------------------------------------


async def test_token_outage_shorter_than_token_life_is_invisible(
    emu: Emulator, make_sidecar: SidecarFactory, client: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 50 s tokens: refresh is due at once (lead 55 s; the minimum interval shortened for the test) and they
    # stay usable for 10 s.
    monkeypatch.setattr("proxy.credentials.schedule.MIN_REFRESH_INTERVAL", 0.2)
    emu.faults.cp_token_ttl = emu.faults.dp_token_ttl = 50.0
    async with make_sidecar(endpoint=["fraud-ro"]) as sidecar:
        emu.faults.token_outage = True
        for _ in range(20):
            assert (await call(client, sidecar))[0] == 200
            await asyncio.sleep(0.1)
        assert emu.counters.snapshot()["token_failures"].get("temporarily_unavailable", 0) >= 1
        assert sidecar.health().ready
        failures = sidecar.metrics.registry.get_sample_value(
            "serving_sidecar_token_fetches_total", {"kind": "workspace", "result": "failure"}
        )
        assert failures and failures >= 1
        emu.faults.token_outage = False
        grants = emu.counters.snapshot()["token_grants"]["client_credentials"]
        assert await wait_for(lambda: emu.counters.snapshot()["token_grants"]["client_credentials"] > grants, 8)
        assert (await call(client, sidecar))[0] == 200


# --- backpressure and cancellation -------------------------------------------------------------------


async def test_requests_beyond_the_bound_are_shed_at_once(
    emu: Emulator, make_sidecar: SidecarFactory, client: aiohttp.ClientSession
) -> None:
    async with make_sidecar(max_in_flight_per_endpoint=2) as sidecar:
        await call(client, sidecar)
        emu.faults.latency["fraud-ro"] = 1.0
        slow = [asyncio.create_task(call(client, sidecar)) for _ in range(2)]
        assert await wait_for(lambda: emu.counters.snapshot()["invocations_in_flight"] == 2)
        status, headers, body = await call(client, sidecar)
        assert status == 503 and headers["Retry-After"] == "1"
        assert b"REQUEST_LIMIT_EXCEEDED" in body
        assert emu.counters.snapshot()["invocations_in_flight"] == 2  # shed while the others still ran
        assert [result[0] for result in await asyncio.gather(*slow)] == [200, 200]
        assert (await call(client, sidecar))[0] == 200


async def test_client_hang_up_cancels_the_upstream_request(
    emu: Emulator, sidecar: Sidecar, client: aiohttp.ClientSession
) -> None:
    await call(client, sidecar)
    emu.faults.latency["fraud-ro"] = 5.0
    with pytest.raises(asyncio.TimeoutError):
        async with client.post(url(sidecar, FRAUD), json=RECORDS, timeout=aiohttp.ClientTimeout(total=0.5)):
            pass
    assert await wait_for(lambda: emu.counters.snapshot()["invocations_cancelled"] == 1)
    assert emu.counters.snapshot()["invocations_in_flight"] == 0


# --- timeouts ----------------------------------------------------------------------------------------


@pytest.fixture
async def slow_stream_emu() -> AsyncIterator[Emulator]:
    endpoints = [*default_endpoints(), EndpointSpec("slow-chat", "chat", stream_interval=1.0)]
    async with Emulator(EmulatorSettings(endpoints=endpoints)) as emulator:
        yield emulator


async def test_stream_idle_timeout_cuts_a_stalled_stream(
    slow_stream_emu: Emulator, tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    from tests.integration.conftest import sidecar_settings

    ca = slow_stream_emu.write_ca(tmp_path / "ca.pem")
    sidecar = Sidecar(sidecar_settings(slow_stream_emu, ca, stream_idle_timeout=0.3))
    await sidecar.start()
    try:
        body = {"messages": [{"role": "user", "content": "one two three"}], "stream": True}
        received = b""
        with pytest.raises(aiohttp.ClientPayloadError):
            async with client.post(url(sidecar, "/serving-endpoints/slow-chat/invocations"), json=body) as resp:
                assert resp.status == 200
                async for chunk in resp.content.iter_any():
                    received += chunk
        assert received.startswith(b"data:")  # the first event came through before the cut
        assert b"[DONE]" not in received
    finally:
        await sidecar.stop()


# --- secret rotation ---------------------------------------------------------------------------------


async def test_rotated_secret_file_is_picked_up_without_restart(
    emu: Emulator, make_sidecar: SidecarFactory, tmp_path: Path
) -> None:
    secret_file = tmp_path / "client-secret"
    secret_file.write_text("stale-secret\n")
    async with make_sidecar(client_secret_file=str(secret_file), wait_ready=False) as sidecar:
        assert await wait_for(lambda: sidecar.credentials.workspace.last_error is not None)
        assert not sidecar.health().ready
        secret_file.write_text(emu.client_secret + "\n")
        assert await sidecar.wait_ready(10), sidecar.health().reason()
