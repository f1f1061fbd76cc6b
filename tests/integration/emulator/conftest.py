"""Fixtures for the emulator's own integration tests: a client trusting its CA, token helpers."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from proxy.emulator import Emulator

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"


@pytest.fixture
async def client(emulator: Emulator) -> AsyncIterator[aiohttp.ClientSession]:
    """An aiohttp session that trusts the emulator's CA (and nothing else)."""
    connector = aiohttp.TCPConnector(ssl=emulator.client_ssl_context())
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


def basic(client_id: str, secret: str) -> dict[str, str]:
    raw = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def post_token(
    client: aiohttp.ClientSession, emu: Emulator, form: dict[str, str], headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    async with client.post(emu.token_endpoint, data=form, headers=headers) as resp:
        assert resp.content_type == "application/json"
        return resp.status, await resp.json()


async def workspace_token(client: aiohttp.ClientSession, emu: Emulator) -> str:
    status, body = await post_token(
        client,
        emu,
        {"grant_type": "client_credentials", "scope": "all-apis"},
        basic(emu.client_id, emu.client_secret),
    )
    assert status == 200, body
    return str(body["access_token"])


async def data_plane_token(client: aiohttp.ClientSession, emu: Emulator, name: str) -> str:
    """The SDK's two-step flow: workspace token, then the jwt-bearer exchange."""
    cp = await workspace_token(client, emu)
    status, body = await post_token(
        client,
        emu,
        {"grant_type": JWT_BEARER, "assertion": cp, "authorization_details": emu.authorization_details(name)},
    )
    assert status == 200, body
    return str(body["access_token"])


async def invoke(
    client: aiohttp.ClientSession, url: str, token: str | None, body: object
) -> tuple[int, dict[str, Any], aiohttp.typedefs.LooseHeaders]:
    headers = {} if token is None else bearer(token)
    async with client.post(url, data=json.dumps(body), headers={**headers, "Content-Type": "application/json"}) as r:
        return r.status, await r.json(), r.headers
