"""Shared fixtures: a running emulated workspace with the default demo endpoints."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import uvloop

from proxy.emulator import Emulator, EmulatorSettings

# Modules whose async tests run on both event loops (`--event-loop uvloop|asyncio`): the fronts, the
# transport and the fault suite. The rest run on asyncio's own loop.
BOTH_LOOPS = frozenset(
    {
        "test_sidecar_http.py",
        "test_grpc_front.py",
        "test_faults.py",
        "test_hostile_requests.py",
        "test_slow_clients.py",
        "test_upstream_pool.py",
        "test_many_connections.py",
        "test_metrics.py",
        "test_clients.py",
        "test_egress_tunnel.py",
    }
)
ASYNCIO_ONLY: Mapping[str, Callable[[], asyncio.AbstractEventLoop]] = {"asyncio": asyncio.new_event_loop}
BOTH: Mapping[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> Mapping[str, Any]:
    return BOTH if item.path.name in BOTH_LOOPS else ASYNCIO_ONLY


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    """A started HTTPS ``Emulator`` on ephemeral loopback ports with ``default_endpoints()``."""
    async with Emulator(EmulatorSettings()) as emu:
        yield emu


@pytest.fixture
def emulator_ca_file(emulator: Emulator, tmp_path: Path) -> Path:
    """The running emulator's CA certificate written to a PEM file."""
    return emulator.write_ca(tmp_path / "emulator-ca.pem")


@pytest.fixture
def issued(emu: Emulator, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every access token the emulator (the test directory's `emu` fixture) mints from now on."""
    tokens: list[str] = []
    authority = emu._state.authority  # type: ignore[union-attr]
    mint = authority.issue

    def recording(**kwargs: Any) -> Any:
        token = mint(**kwargs)
        tokens.append(token.access_token)
        return token

    monkeypatch.setattr(authority, "issue", recording)
    return tokens


@pytest.fixture(autouse=True)
def no_proxy_from_the_test_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests reach the emulator on loopback directly: an egress proxy set where the tests run (CI behind a
    proxy) must not reach the sidecars they start. Tests of the egress proxy set these themselves."""
    for name in ("https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
