"""`serving-sidecar run` (on its default uvloop event loop) behind an egress proxy given in its environment."""

from __future__ import annotations

import base64
import signal
from urllib.parse import urlsplit

import aiohttp
import pytest

from proxy.emulator import Emulator
from tests.e2e.conftest import Launch
from tests.e2e.test_config_errors import BASE_ENV, assert_one_line_config_error, run_cli
from tests.integration.connect_proxy import ConnectProxy

AUTHORIZATION = "Basic " + base64.b64encode(b"ops:egress-password-42").decode()


@pytest.mark.parametrize("event_loop", ["uvloop", "asyncio"])
async def test_run_tunnels_through_https_proxy_from_its_environment(
    emu: Emulator, launch: Launch, issued: list[str], event_loop: str
) -> None:
    workspace_port = urlsplit(emu.workspace_url).port
    data_port = urlsplit(emu.endpoint_url("fraud-ro")).port
    async with ConnectProxy(require=AUTHORIZATION) as proxy:
        env = {"https_proxy": f"http://ops:egress-password-42@127.0.0.1:{proxy.port}", "NO_PROXY": "example.com"}
        flags = ("--endpoint", "fraud-ro", "--drain-delay", "0", "--log-level", "debug", "--event-loop", event_loop)
        sidecar = await launch(*flags, env=env)
        async with aiohttp.ClientSession() as session:
            for _ in range(5):
                target = sidecar.url("/serving-endpoints/fraud-ro/invocations")
                async with session.post(target, json={"dataframe_records": [{"amount": 1}]}) as resp:
                    assert resp.status == 200, await resp.text()
        sidecar.signal(signal.SIGTERM)
        assert await sidecar.wait(30) == 0
    assert proxy.heads and all(head.startswith(b"CONNECT 127.0.0.1:") for head in proxy.heads)
    assert proxy.tunnels_to(workspace_port) and proxy.tunnels_to(data_port)
    counters = emu.counters.snapshot()
    assert counters["control_plane_connections"] == len(proxy.tunnels_to(workspace_port))
    assert counters["data_plane_connections"] == len(proxy.tunnels_to(data_port))
    relayed = proxy.relayed()
    assert issued and not any(token.encode() in relayed for token in issued)
    assert b"Bearer" not in relayed and emu.client_secret.encode() not in relayed
    log = sidecar.log()
    assert f"tunnel through proxy http://127.0.0.1:{proxy.port} (with credentials); NO_PROXY: example.com" in log
    assert "egress-password-42" not in log and AUTHORIZATION.split()[1] not in log


@pytest.mark.parametrize("command", ["run", "check"])
@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("https://ops:egress-password-42@proxy.internal:3128", "an https:// proxy (TLS to the proxy itself)"),
        ("socks5://ops:egress-password-42@proxy.internal:1080", "expected an http://HOST:PORT proxy URL"),
    ],
)
async def test_an_unsupported_proxy_url_is_a_one_line_configuration_error(
    command: str, value: str, message: str
) -> None:
    result = await run_cli(command, env={**BASE_ENV, "HTTPS_PROXY": value})
    line = assert_one_line_config_error(result, "HTTPS_PROXY: ", message, "--egress-proxy off")
    assert "egress-password-42" not in result.stderr + result.stdout, line
