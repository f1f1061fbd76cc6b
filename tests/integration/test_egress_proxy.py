"""The sidecar behind an egress proxy: a CONNECT proxy on loopback between it and the emulator.

The proxy is configured as users do, through HTTPS_PROXY / NO_PROXY in the environment the settings
are read from. It records every request head and every byte it relays, so the tests can show what an
egress proxy sees: CONNECT lines and TLS records, never a request line, a token or the client secret.
"""

from __future__ import annotations

import base64
import logging
from urllib.parse import urlsplit

import aiohttp
import pytest

from proxy.app import Sidecar
from proxy.emulator import Emulator
from tests.integration.conftest import SidecarFactory, url
from tests.integration.connect_proxy import ConnectProxy

RECORDS = {"dataframe_records": [{"amount": 12.5, "items": 3}]}
PLAIN = {"instances": [[1, 2], [3, 4]]}
USER, PASSWORD = "egress-user", "pr0xy p@ss"  # the password needs percent-encoding in a URL
PROXY_AUTHORIZATION = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


def port_of(address: str) -> int:
    return urlsplit(address).port or 443


def proxy_url(proxy: ConnectProxy, password: str = PASSWORD) -> str:
    quoted = password.replace("%", "%25").replace(" ", "%20").replace("@", "%40")
    return f"http://{USER}:{quoted}@127.0.0.1:{proxy.port}"


async def invoke(client: aiohttp.ClientSession, sidecar: Sidecar, name: str, body: object) -> tuple[int, bytes]:
    async with client.post(url(sidecar, f"/serving-endpoints/{name}/invocations"), json=body) as resp:
        return resp.status, await resp.read()


async def test_calls_go_through_tunnels_that_carry_only_tls(
    emu: Emulator,
    make_sidecar: SidecarFactory,
    client: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
    issued: list[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    calls = 8
    async with ConnectProxy(require=PROXY_AUTHORIZATION) as proxy:
        async with make_sidecar(environ={"HTTPS_PROXY": proxy_url(proxy)}) as sidecar:
            for _ in range(calls):
                assert await invoke(client, sidecar, "fraud-ro", RECORDS) == (200, b'{"predictions":[15.5]}')
                status, _ = await invoke(client, sidecar, "plain-model", PLAIN)
                assert status == 200
        # the proxy saw CONNECT requests only, each with the credentials from the proxy URL
        assert proxy.heads and len(proxy.heads) == len(proxy.tunnels)
        for head in proxy.heads:
            line, *headers = head.decode().split("\r\n")
            assert line.startswith("CONNECT 127.0.0.1:") and line.endswith(" HTTP/1.1"), line
            assert f"Proxy-Authorization: {PROXY_AUTHORIZATION}" in headers
        # the control plane (token, metadata) and the data plane (route-optimized host) were both tunnelled
        workspace = proxy.tunnels_to(port_of(emu.workspace_url))
        data_plane = proxy.tunnels_to(port_of(emu.endpoint_url("fraud-ro")))
        assert workspace and data_plane, [t.target for t in proxy.tunnels]
        counters = emu.counters.snapshot()
        assert counters["token_grants"]["client_credentials"] >= 1 and counters["metadata_reads"]["fraud-ro"] >= 1
        # ... and nothing reached the emulator around the proxy
        assert counters["control_plane_connections"] == len(workspace)
        assert counters["data_plane_connections"] == len(data_plane)
        # keep-alive: each tunnel is a pooled connection, reused call after call (the calls come one by one)
        assert len(data_plane) <= 2, len(data_plane)
        assert sum(counters["invocations"]["fraud-ro"].values()) == calls
        # every tunnel carried TLS from its first byte; no request line, header, token or secret in clear
        for tunnel in proxy.tunnels:
            assert tunnel.sent[:2] == b"\x16\x03" and tunnel.received[:2] == b"\x16\x03", tunnel.target
        relayed = proxy.relayed()
        assert len(issued) >= 2  # the workspace token and fraud-ro's data-plane token
        for clear in (b"HTTP/1.1", b"POST ", b"Authorization", b"Bearer", b"invocations", b"dataframe_records"):
            assert clear not in relayed, clear
        for secret in (*issued, emu.client_secret, PASSWORD):
            assert secret.encode() not in relayed
    logged = caplog.text
    assert f"tunnel through proxy http://127.0.0.1:{proxy.port} (with credentials)" in logged
    assert PASSWORD not in logged and PROXY_AUTHORIZATION.split()[1] not in logged


@pytest.mark.parametrize("no_proxy", ["127.0.0.1", "*", "localhost,127.0.0.0/8"])
async def test_no_proxy_bypasses_the_proxy(
    make_sidecar: SidecarFactory, client: aiohttp.ClientSession, no_proxy: str
) -> None:
    async with ConnectProxy() as proxy:
        environ = {"https_proxy": proxy.url, "NO_PROXY": no_proxy}
        async with make_sidecar(environ=environ) as sidecar:
            assert sidecar.settings.egress_proxy is not None
            assert await invoke(client, sidecar, "fraud-ro", RECORDS) == (200, b'{"predictions":[15.5]}')
        assert proxy.heads == []


async def test_egress_proxy_off_ignores_the_environment(
    make_sidecar: SidecarFactory, client: aiohttp.ClientSession
) -> None:
    async with ConnectProxy() as proxy:
        async with make_sidecar(environ={"HTTPS_PROXY": proxy.url}, egress_proxy="off") as sidecar:
            assert sidecar.settings.egress_proxy is None
            assert await invoke(client, sidecar, "fraud-ro", RECORDS) == (200, b'{"predictions":[15.5]}')
        assert proxy.heads == []


async def test_a_proxy_refusing_the_data_plane_tunnel_is_a_502_naming_it(
    emu: Emulator, make_sidecar: SidecarFactory, client: aiohttp.ClientSession
) -> None:
    wrong = "wrong-proxy-password"
    async with ConnectProxy(require=PROXY_AUTHORIZATION) as proxy:
        # the workspace (its port listed in NO_PROXY) is reached directly; the data-plane host through the proxy
        environ = {"HTTPS_PROXY": proxy_url(proxy, wrong), "NO_PROXY": f"127.0.0.1:{port_of(emu.workspace_url)}"}
        async with make_sidecar(environ=environ, retry_attempts=1) as sidecar:
            status, body = await invoke(client, sidecar, "fraud-ro", RECORDS)
        assert status == 502, body
        message = body.decode()
        assert f"proxy http://127.0.0.1:{proxy.port} refused the tunnel: 407 Proxy Authentication Required" in message
        assert wrong not in message and base64.b64encode(f"{USER}:{wrong}".encode()).decode() not in message
        assert {t.target for t in proxy.tunnels} == set()
        assert all(
            head.startswith(f"CONNECT 127.0.0.1:{port_of(emu.endpoint_url('fraud-ro'))} ".encode())
            for head in proxy.heads
        )


async def test_a_proxy_refusing_the_workspace_tunnel_is_a_503_naming_it(
    make_sidecar: SidecarFactory, client: aiohttp.ClientSession
) -> None:
    wrong = "wrong-proxy-password"
    async with ConnectProxy(require=PROXY_AUTHORIZATION) as proxy:
        async with make_sidecar(environ={"HTTPS_PROXY": proxy_url(proxy, wrong)}, wait_ready=False) as sidecar:
            assert not await sidecar.wait_ready(1.0)
            status, body = await invoke(client, sidecar, "fraud-ro", RECORDS)
            reason = sidecar.health().reason()
        assert status == 503, body
        for text in (body.decode(), reason):
            assert f"proxy http://127.0.0.1:{proxy.port} refused the tunnel: 407" in text, text
            assert wrong not in text
        assert proxy.tunnels == [] and proxy.heads


async def test_an_unreachable_proxy_is_a_clear_502(
    emu: Emulator, make_sidecar: SidecarFactory, client: aiohttp.ClientSession
) -> None:
    async with ConnectProxy() as proxy:
        closed_port = proxy.port
    environ = {"HTTPS_PROXY": f"127.0.0.1:{closed_port}", "NO_PROXY": f"127.0.0.1:{port_of(emu.workspace_url)}"}
    async with make_sidecar(environ=environ, retry_attempts=1) as sidecar:
        status, body = await invoke(client, sidecar, "fraud-ro", RECORDS)
    assert status == 502
    assert f"proxy http://127.0.0.1:{closed_port} cannot be reached" in body.decode()
