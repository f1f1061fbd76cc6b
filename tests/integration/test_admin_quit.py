"""POST /quitquitquit on the admin listener (real loopback sockets): hooks, methods, who may call it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import pytest

from proxy.admin import Health, admin_handler, is_loopback_peer
from proxy.config import Address
from proxy.downstream.plain import Handler, PlainServer
from proxy.metrics import Metrics

HEALTH = Health(started=True, listening=True, credential_ok=True, draining=False)


@asynccontextmanager
async def admin_server(handler: Handler) -> AsyncIterator[str]:
    server = PlainServer(handler)
    port = await server.start(Address("127.0.0.1", 0))
    try:
        yield f"http://127.0.0.1:{port}/quitquitquit"
    finally:
        await server.stop(1)


def seen_from(remote: str, handler: Handler) -> Handler:
    """`handler`, as if every request came from `remote` (only loopback is reachable here)."""
    return lambda method, path, _peer: handler(method, path, remote)


async def test_post_runs_the_hooks_and_other_methods_are_405() -> None:
    calls: list[str] = []
    hooks = [lambda: calls.append("stop")]
    handler = admin_handler(lambda: HEALTH, Metrics(), on_quit=hooks)
    async with admin_server(handler) as url, aiohttp.ClientSession() as session:
        for method in ("GET", "PUT", "DELETE", "HEAD"):
            async with session.request(method, url) as resp:
                assert resp.status == 405, method
                assert resp.headers["Allow"] == "POST"
        assert calls == []
        hooks.append(lambda: calls.append("added later"))
        async with session.post(url) as resp:
            assert resp.status == 200
            assert await resp.json() == {"status": "ok", "reason": "stopping"}
    assert calls == ["stop", "added later"]


async def test_only_loopback_peers_may_stop_it() -> None:
    calls: list[str] = []
    handler = seen_from("10.1.2.3", admin_handler(lambda: HEALTH, Metrics(), on_quit=[lambda: calls.append("stop")]))
    async with admin_server(handler) as url, aiohttp.ClientSession() as session, session.post(url) as resp:
        assert resp.status == 403
        assert "loopback" in (await resp.json())["reason"]
    assert calls == []


async def test_without_hooks_it_says_so() -> None:
    async with (
        admin_server(admin_handler(lambda: HEALTH, Metrics())) as url,
        aiohttp.ClientSession() as session,
        session.post(url) as resp,
    ):
        assert resp.status == 503


@pytest.mark.parametrize(
    ("remote", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("10.0.0.7", False),
        ("::ffff:10.0.0.7", False),
        ("fe80::1", False),
        ("", False),
        (None, False),
        ("not-an-address", False),
    ],
)
def test_is_loopback_peer(remote: str | None, loopback: bool) -> None:
    assert is_loopback_peer(remote) is loopback
