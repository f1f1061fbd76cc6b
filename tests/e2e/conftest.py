"""The sidecar as a subprocess (`python -m proxy run`), the emulated workspace in the test process."""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from proxy.emulator import Emulator, EmulatorSettings

READY_WITHIN = 15.0  # seconds for the subprocess to import, bind and fetch its first token


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class SidecarProcess:
    process: subprocess.Popen[bytes]
    http_port: int
    admin_port: int
    output: Path  # stdout and stderr, together

    def url(self, path: str, listener: str = "http") -> str:
        port = self.http_port if listener == "http" else self.admin_port
        return f"http://127.0.0.1:{port}{path}"

    def signal(self, signum: signal.Signals = signal.SIGTERM) -> None:
        self.process.send_signal(signum)

    async def wait(self, seconds: float) -> int:
        """The exit code; fails the test if the process is still running after `seconds`."""
        return await asyncio.to_thread(self.process.wait, seconds)

    def log(self) -> str:
        return self.output.read_text(errors="replace")


Launch = Callable[..., Awaitable[SidecarProcess]]


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    async with Emulator(EmulatorSettings()) as emulator:
        yield emulator


@pytest.fixture
async def launch(emu: Emulator, tmp_path: Path) -> AsyncIterator[Launch]:
    """`await launch(*extra_args)`: a ready sidecar subprocess; killed at the end if still running.

    `env` adds to (or, with None values, removes from) its environment; `ready=False` returns once the
    admin listener answers, ready or not.
    """
    ca_file = emu.write_ca(tmp_path / "ca.pem")
    started: list[SidecarProcess] = []

    async def start(
        *extra: str, ready: bool = True, env: dict[str, str | None] | None = None, open_files: int | None = None
    ) -> SidecarProcess:
        http_port, admin_port = free_port(), free_port()
        output = tmp_path / f"sidecar-{len(started)}.log"
        environ = {
            **os.environ,
            "DATABRICKS_HOST": emu.workspace_url,
            "DATABRICKS_CLIENT_ID": emu.client_id,
            "DATABRICKS_CLIENT_SECRET": emu.client_secret,
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        for key, value in (env or {}).items():
            environ.pop(key, None)
            if value is not None:
                environ[key] = value
        args = [
            sys.executable,
            "-m",
            "proxy",
            "run",
            "--ca-bundle",
            str(ca_file),
            "--http-listen",
            f"127.0.0.1:{http_port}",
            "--grpc-listen",
            f"127.0.0.1:{free_port()}",
            "--admin-listen",
            f"127.0.0.1:{admin_port}",
            *extra,
        ]
        with output.open("wb") as sink:
            process = subprocess.Popen(  # noqa: ASYNC220
                args, env=environ, stdout=sink, stderr=subprocess.STDOUT, preexec_fn=_file_limit(open_files)
            )
        sidecar = SidecarProcess(process, http_port, admin_port, output)
        started.append(sidecar)
        await _wait_ready(sidecar, statuses=(200,) if ready else (200, 503))
        return sidecar

    yield start
    for sidecar in started:
        if sidecar.process.poll() is None:
            sidecar.process.kill()
            await asyncio.to_thread(sidecar.process.wait, 10)


def _file_limit(open_files: int | None) -> Callable[[], None] | None:
    """A preexec function that caps the child's open files (RLIMIT_NOFILE), or None."""
    if open_files is None:
        return None
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))


async def _wait_ready(sidecar: SidecarProcess, statuses: tuple[int, ...] = (200,)) -> None:
    deadline = time.monotonic() + READY_WITHIN
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            assert sidecar.process.poll() is None, f"sidecar exited early:\n{sidecar.log()}"
            try:
                async with session.get(sidecar.url("/readyz", "admin")) as resp:
                    if resp.status in statuses:
                        return
            except aiohttp.ClientError:
                pass  # not listening yet
            await asyncio.sleep(0.05)
    raise AssertionError(f"sidecar not ready within {READY_WITHIN} s:\n{sidecar.log()}")
