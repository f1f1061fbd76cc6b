"""Shared fixtures: a running emulated workspace with the default demo endpoints."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

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
