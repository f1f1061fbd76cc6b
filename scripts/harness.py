"""Shared plumbing for the soak, bench and connections scripts (not a test module, not part of `proxy`).

- `SidecarProcess`: the real CLI (`python -m proxy run`) as a subprocess on free loopback ports, so its
  RSS is its own and the load generator does not share its event loop or its core.
- `EmulatorProcess`: `python -m proxy emulator` as a subprocess (the bench uses it so the client's
  loop only measures the client).
- `rss_kib` / `peak_rss_kib`: VmRSS / VmHWM from /proc/<pid>/status.
- `scrape`: the sidecar's Prometheus samples as {(name, labels): value}.
- `percentile`, `machine`: small helpers for reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

Labels = tuple[tuple[str, str], ...]
Samples = dict[tuple[str, Labels], float]


def free_port() -> int:
    """A loopback port that was free a moment ago (the caller binds it right after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def machine() -> str:
    """One line: cores, CPU model, Python, for the reports."""
    model = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    cores = os.cpu_count() or 0
    return f"{cores} cores ({model}), Python {platform.python_version()}, {platform.system()} {platform.release()}"


def _status_field(pid: int, field: str) -> int | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])  # kB
    return None


def rss_kib(pid: int) -> int | None:
    """Resident set size now (VmRSS), KiB."""
    return _status_field(pid, "VmRSS")


def peak_rss_kib(pid: int) -> int | None:
    """Peak resident set size so far (VmHWM), KiB."""
    return _status_field(pid, "VmHWM")


def mib(kib: int | None) -> str:
    return "n/a" if kib is None else f"{kib / 1024:.1f} MiB"


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[index]


def grpc_front_available() -> bool:
    """True when this checkout has the gRPC front (`proxy.downstream.grpc`)."""
    import importlib.util

    try:
        return importlib.util.find_spec("proxy.downstream.grpc") is not None
    except ModuleNotFoundError:
        return False


async def scrape(session: aiohttp.ClientSession, admin_url: str) -> Samples:
    async with session.get(admin_url + "/metrics") as resp:
        text = await resp.text()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def select(samples: Samples, name: str, **match: str) -> dict[Labels, float]:
    """Samples of one metric whose labels include `match`."""
    return {
        labels: value
        for (sample_name, labels), value in samples.items()
        if sample_name == name and all((k, v) in labels for k, v in match.items())
    }


class SidecarProcess:
    """`python -m proxy run` against a workspace, on free loopback ports; stop() sends SIGTERM."""

    def __init__(
        self,
        *,
        host: str,
        client_id: str,
        client_secret: str,
        ca_file: Path | None,
        flags: Mapping[str, Any] | None = None,
        endpoints: Iterable[str] = (),
        log_dir: Path | None = None,
        python: str = sys.executable,
    ) -> None:
        self.python = python  # the interpreter that runs `python -m proxy run`
        self.host = host
        self.client_id = client_id
        self._secret = client_secret
        self.ca_file = ca_file
        self.flags = dict(flags or {})
        self.endpoints = list(endpoints)
        self.log_dir = log_dir or Path(tempfile.mkdtemp(prefix="serving-sidecar-run-"))
        self.log_path = self.log_dir / "sidecar.log"
        self.http_port = self.grpc_port = self.admin_port = 0
        self.process: asyncio.subprocess.Process | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def _argv(self) -> list[str]:
        argv = [self.python, "-m", "proxy", "run", "--host", self.host, "--client-id", self.client_id]
        if self.ca_file is not None:
            argv += ["--ca-bundle", str(self.ca_file)]
        argv += ["--http-listen", f"127.0.0.1:{self.http_port}"]
        argv += ["--grpc-listen", f"127.0.0.1:{self.grpc_port}"]
        argv += ["--admin-listen", f"127.0.0.1:{self.admin_port}"]
        for name in self.endpoints:
            argv += ["--endpoint", name]
        for key, value in self.flags.items():
            argv += [f"--{key.replace('_', '-')}", str(value)]
        return argv

    async def start(self, ready_within: float = 20.0) -> None:
        """Start on fresh ports and wait for /readyz; a port race (someone took one) is retried twice."""
        last_error = ""
        for _ in range(3):
            self.http_port, self.grpc_port, self.admin_port = free_port(), free_port(), free_port()
            env = {**os.environ, "DATABRICKS_CLIENT_SECRET": self._secret}
            for name in ("DATABRICKS_HOST", "DATABRICKS_CLIENT_ID", "DATABRICKS_CONFIG_PROFILE"):
                env.pop(name, None)
            self._log = self.log_path.open("ab")
            self.process = await asyncio.create_subprocess_exec(
                *self._argv(), stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
            if await self._wait_ready(ready_within):
                return
            last_error = self.tail()
            await self.stop()
        raise RuntimeError(f"sidecar did not become ready; log {self.log_path}:\n{last_error}")

    async def _wait_ready(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self.process is None or self.process.returncode is not None:
                    return False
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with session.get(self.admin_url + "/readyz") as resp:
                        if resp.status == 200:
                            return True
                await asyncio.sleep(0.1)
        return False

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    async def stop(self, grace: float = 20.0) -> int | None:
        """SIGTERM, wait up to `grace` seconds, then SIGKILL. Returns the exit code."""
        process, self.process = self.process, None
        code: int | None = None
        if process is not None:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
            try:
                code = await asyncio.wait_for(process.wait(), grace)
            except TimeoutError:
                process.kill()
                code = await process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        return code


class EmulatorProcess:
    """`python -m proxy emulator` on an ephemeral port; `info` holds its printed `key: value` lines."""

    def __init__(self, extra: Sequence[str] = (), log_dir: Path | None = None) -> None:
        self.dir = log_dir or Path(tempfile.mkdtemp(prefix="serving-emulator-run-"))
        self.ca_file = self.dir / "ca.pem"
        self.extra = list(extra)
        self.info: dict[str, str] = {}
        self.process: subprocess.Popen[str] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, ready_within: float = 20.0) -> None:
        argv = [sys.executable, "-m", "proxy", "emulator", "--control-port", "0", "--ca-out", str(self.ca_file)]
        self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            [*argv, *self.extra],
            stdout=subprocess.PIPE,
            stderr=(self.dir / "emulator.log").open("ab"),
            text=True,
            start_new_session=True,
        )
        assert self.process.stdout is not None
        deadline = time.monotonic() + ready_within
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            line = line.strip()
            if line == "ready":
                return
            key, sep, value = line.partition(": ")
            if sep:
                self.info[key] = value
        self.stop()
        raise RuntimeError(f"emulator did not start; see {self.dir / 'emulator.log'}")

    def endpoint_url(self, name: str) -> str:
        return self.info[f"endpoint {name}"].split(" ", 1)[0]

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        if process.stdout is not None:
            process.stdout.close()
