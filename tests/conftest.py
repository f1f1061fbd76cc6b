"""Shared fixtures: a running emulated workspace with the default demo endpoints."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from proxy.emulator import Emulator, EmulatorSettings


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
