"""Shared fixtures: a running emulated workspace with the default demo endpoints."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from proxy.emulator import Emulator, EmulatorSettings


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    """A started HTTPS ``Emulator`` on ephemeral loopback ports with ``default_endpoints()``."""
    async with Emulator(EmulatorSettings()) as emu:
        yield emu
