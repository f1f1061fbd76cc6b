"""Fixtures: a started emulator (real TLS from its trustme CA) and a sidecar pointed at it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy import config
from proxy.app import Sidecar
from proxy.emulator import Emulator, EmulatorSettings, EndpointSpec, default_endpoints

SidecarFactory = Callable[..., AbstractAsyncContextManager[Sidecar]]
ECHO = "echo-ro"  # an `echo` endpoint: it answers the body it received, byte for byte


def echo_settings() -> EmulatorSettings:
    """The default endpoints plus `ECHO`; a module overrides the `emulator` fixture with these to use it."""
    return EmulatorSettings(endpoints=[*default_endpoints(), EndpointSpec(ECHO, "echo")])


@pytest.fixture
def emu(emulator: Emulator) -> Emulator:
    """The shared `emulator` fixture (tests/conftest.py) under a short name."""
    return emulator


def sidecar_settings(emulator: Emulator, ca_file: Path, **overrides: Any) -> config.Settings:
    secret = overrides.pop("client_secret", emulator.client_secret)
    environ = {"DATABRICKS_CLIENT_SECRET": secret, **overrides.pop("environ", {})}  # e.g. HTTPS_PROXY
    flags: dict[str, Any] = {
        "host": emulator.workspace_url,
        "client_id": emulator.client_id,
        "ca_bundle": str(ca_file),
        "http_listen": "127.0.0.1:0",
        "grpc_listen": "127.0.0.1:0",
        "admin_listen": "127.0.0.1:0",
        **overrides,
    }
    return config.load(flags, environ=environ)


@pytest.fixture
def make_sidecar(emu: Emulator, tmp_path: Path) -> SidecarFactory:
    """`async with make_sidecar(**flags) as sidecar:` a started sidecar; waits for readiness unless told not to."""
    ca_file = tmp_path / "ca.pem"
    emu.write_ca(ca_file)

    @asynccontextmanager
    async def make(*, wait_ready: bool = True, **overrides: Any) -> AsyncIterator[Sidecar]:
        sidecar = Sidecar(sidecar_settings(emu, ca_file, **overrides))
        try:
            await sidecar.start()  # inside: a start that fails half-way still closes what it opened
            if wait_ready:
                assert await sidecar.wait_ready(10), sidecar.health().reason()
            yield sidecar
        finally:
            await sidecar.stop()

    return make


@pytest.fixture
async def sidecar(make_sidecar: SidecarFactory) -> AsyncIterator[Sidecar]:
    async with make_sidecar() as started:
        yield started


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def url(sidecar: Sidecar, path: str, listener: str = "http") -> str:
    return f"http://127.0.0.1:{sidecar.port(listener)}{path}"


def invocations(emulator: Emulator) -> dict[str, dict[str, int]]:
    """Invocations the emulated data plane answered so far, by endpoint and status."""
    counted: dict[str, dict[str, int]] = emulator.counters.snapshot()["invocations"]
    return counted


async def eventually(check: Callable[[], bool], seconds: float, what: str) -> None:
    """Wait until `check()` holds; fail naming `what` if it has not after `seconds`."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {seconds} s"
        await asyncio.sleep(0.01)


async def upstream_settled(emulator: Emulator, seconds: float = 10.0) -> None:
    """Wait until no invocation handler runs in the emulator (a hang guard, not a timing assertion)."""
    await eventually(lambda: emulator.counters.invocations_in_flight == 0, seconds, "emulator handlers finished")
