"""Workload identity federation: a projected service-account token file exchanged (RFC 8693) for a
workspace token, no client secret anywhere; the file is re-read as the kubelet rotates it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from proxy.emulator import Emulator
from tests.integration.conftest import SidecarFactory, url

RECORDS = {"dataframe_records": [{"a": 1, "b": 2}]}
FRAUD = "/serving-endpoints/fraud-ro/invocations"


def workload(token_file: Path, **extra: object) -> dict[str, object]:
    return {"auth": "workload-identity", "token_file": str(token_file), "client_secret": "", **extra}


async def test_token_file_is_exchanged_without_any_secret(
    emu: Emulator, make_sidecar: SidecarFactory, tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(emu.issue_workload_token())
    async with make_sidecar(**workload(token_file)) as sidecar:
        assert sidecar.settings.client_secret is None and sidecar.settings.client_secret_file is None
        async with client.post(url(sidecar, FRAUD), json=RECORDS) as resp:
            assert resp.status == 200
            assert await resp.json() == {"predictions": [3]}
    grants = emu.counters.snapshot()["token_grants"]
    assert grants["token_exchange"] == 1
    assert grants["client_credentials"] == 0


async def test_rotated_token_file_is_read_on_the_next_exchange(
    emu: Emulator, make_sidecar: SidecarFactory, tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(emu.issue_workload_token(ttl=1))
    async with make_sidecar(**workload(token_file)) as sidecar:
        async with client.post(url(sidecar, FRAUD), json=RECORDS) as resp:
            assert resp.status == 200
        await asyncio.sleep(1.5)  # the first projected token has expired: only a re-read file can work
        token_file.write_text(emu.issue_workload_token())
        emu.revoke_all_tokens()  # forces a new exchange now instead of at the refresh point
        async with client.post(url(sidecar, FRAUD), json=RECORDS) as resp:
            assert resp.status == 200, await resp.text()
    assert emu.counters.snapshot()["token_grants"]["token_exchange"] == 2


async def test_wrong_audience_gives_a_clear_error(
    emu: Emulator, make_sidecar: SidecarFactory, tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(emu.issue_workload_token(audience="https://not-this-workspace/oidc/v1/token"))
    async with make_sidecar(wait_ready=False, **workload(token_file)) as sidecar:
        async with client.post(url(sidecar, FRAUD), json=RECORDS) as resp:
            assert resp.status == 503
            message = (await resp.json())["message"]
        assert "invalid_grant" in message and "aud" in message.lower()
        assert not sidecar.health().ready


async def test_configured_audience_is_checked_before_any_exchange(
    emu: Emulator, make_sidecar: SidecarFactory, tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(emu.issue_workload_token(audience="some-other-audience"))
    flags = workload(token_file, token_audience=emu.token_endpoint)
    async with make_sidecar(wait_ready=False, **flags) as sidecar:
        async with client.post(url(sidecar, FRAUD), json=RECORDS) as resp:
            assert resp.status == 503
            message = (await resp.json())["message"]
        assert "--token-audience" in message and "some-other-audience" in message
    assert emu.counters.snapshot()["token_grants"]["token_exchange"] == 0
