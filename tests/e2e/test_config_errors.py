"""Every configuration error, through the CLI as a subprocess: one line on stderr naming the option,
exit code 2, no traceback, nothing secret; and a plain-HTTP workspace never receives a credential."""

from __future__ import annotations

import asyncio
import ctypes
import os
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from proxy.config import OPTIONS
from proxy.emulator import Emulator, EmulatorSettings

SECRET = "e2e-client-secret-never-printed"
BASE_ENV = {"DATABRICKS_HOST": "https://127.0.0.1:1", "DATABRICKS_CLIENT_ID": "sp", "DATABRICKS_CLIENT_SECRET": SECRET}
PATH_TRICK = "../../../api/2.0/preview/scim/v2/Me#"
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, PR_CAPBSET_DROP = 1, 2, 24


@dataclass
class Result:
    code: int | None  # None: still running when the time ran out (killed)
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[str]:
        return self.stderr.splitlines()


def _without_dac_override() -> None:
    """In the child, before exec: root loses the capabilities that read any file, so mode 000 means unreadable."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


async def run_cli(*args: str, env: dict[str, str] | None = None, limit: float = 60, drop_dac: bool = False) -> Result:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DATABRICKS_", "SERVING_SIDECAR_"))}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        *args,
        env={**clean, "HOME": "/nonexistent", **(BASE_ENV if env is None else env)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=_without_dac_override if drop_dac and os.geteuid() == 0 else None,
    )
    try:
        async with asyncio.timeout(limit):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        return Result(None, out.decode(), err.decode())
    return Result(proc.returncode, out.decode(), err.decode())


def assert_one_line_config_error(result: Result, *names: str) -> str:
    assert result.code == 2, result
    assert len(result.lines) == 1, result.stderr
    line = result.lines[0]
    assert line.startswith("serving-sidecar: configuration error: ") or "usage error" in line, line
    assert "Traceback" not in result.stderr and SECRET not in result.stderr + result.stdout
    for name in names:
        assert name in line, line
    return line


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- files ----------------------------------------------------------------------------------------


async def test_a_ca_bundle_that_is_not_pem(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(b"\x30\x82 this is DER-ish, not PEM")
    for command in ("run", "check"):
        assert_one_line_config_error(await run_cli(command, "--ca-bundle", str(ca)), "ca-bundle", "PEM")


async def test_a_secret_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_bytes(b"\xff\xfe" + SECRET.encode("utf-16-le"))
    line = assert_one_line_config_error(
        await run_cli("run", "--client-secret-file", str(path)), "client-secret-file", "not UTF-8"
    )
    assert str(path) in line


async def test_a_secret_file_that_cannot_be_read(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text(SECRET)
    path.chmod(0)
    try:
        result = await run_cli("run", "--client-secret-file", str(path), drop_dac=True)
    finally:
        path.chmod(0o600)
    assert_one_line_config_error(result, "client-secret-file", "Permission denied")


# --- listen addresses -----------------------------------------------------------------------------


@pytest.mark.parametrize("listener", ["http", "grpc", "admin"])
async def test_a_port_in_use_at_start(taken_port: int, listener: str) -> None:
    flags = {name: f"127.0.0.1:{free_port()}" for name in ("http", "grpc", "admin")}
    flags[listener] = f"127.0.0.1:{taken_port}"
    args = [arg for name, address in flags.items() for arg in (f"--{name}-listen", address)]
    line = assert_one_line_config_error(await run_cli("run", *args), f"{listener}-listen")
    assert f"cannot listen on 127.0.0.1:{taken_port}: Address already in use" in line


# --- numbers and names ----------------------------------------------------------------------------

FLOAT_CASES = [(opt.name, ("nan", "inf", "-1")[i % 3]) for i, opt in enumerate(o for o in OPTIONS if o.kind == "float")]


@pytest.mark.parametrize(("name", "value"), FLOAT_CASES)
async def test_a_float_option_that_is_not_finite_or_is_negative(name: str, value: str) -> None:
    line = assert_one_line_config_error(await run_cli("run", f"--{name}", value), f"--{name}")
    assert "finite" in line or "zero or more" in line


async def test_a_fractional_integer_in_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "sidecar.yaml"
    config.write_text("pool_size: 1.9\n")
    line = assert_one_line_config_error(await run_cli("run", "--config", str(config)), "pool_size")
    assert line.endswith("pool_size (config file): expected an integer, got 1.9")


async def test_a_fractional_integer_flag_and_variable() -> None:
    assert_one_line_config_error(await run_cli("run", "--max-in-flight", "2.5"), "--max-in-flight", "integer")
    result = await run_cli("check", env={**BASE_ENV, "SERVING_SIDECAR_RETRY_ATTEMPTS": "nan"})
    assert_one_line_config_error(result, "SERVING_SIDECAR_RETRY_ATTEMPTS", "integer")


@pytest.mark.parametrize("name", [PATH_TRICK, "a b", "x" * 65])
async def test_an_endpoint_name_that_routes_could_not_carry(name: str) -> None:
    for command in ("run", "check"):
        line = assert_one_line_config_error(await run_cli(command, "--endpoint", name), "endpoint")
        assert "not an endpoint name" in line


async def test_a_usage_error_is_one_line_too() -> None:
    result = await run_cli("run", "--log-format", "xml")
    assert result.code == 2 and len(result.lines) == 1 and "usage error" in result.lines[0], result


# --- the workspace URL: credentials only over TLS ---------------------------------------------------


@dataclass
class Capture:
    """A plain-HTTP server on loopback that records every request it gets."""

    port: int = 0
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)


@pytest.fixture
async def capture() -> AsyncIterator[Capture]:
    seen = Capture()

    async def record(request: web.Request) -> web.Response:
        seen.requests.append((request.method, request.path_qs, dict(request.headers)))
        body = '{"access_token": "captured-token-1", "token_type": "Bearer", "expires_in": 3600}'
        return web.Response(text=body, content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    seen.port = int(runner.addresses[0][1])
    try:
        yield seen
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("command", ["run", "check"])
async def test_a_plain_http_workspace_never_receives_a_credential(capture: Capture, command: str) -> None:
    env = {**BASE_ENV, "DATABRICKS_HOST": f"http://127.0.0.1:{capture.port}"}
    listens = [f"--{name}-listen=127.0.0.1:{free_port()}" for name in ("http", "grpc", "admin")]
    extra = [*listens, "--endpoint", "fraud-ro"] if command == "run" else ["--endpoint", "fraud-ro"]
    result = await run_cli(command, *extra, env=env, limit=20)
    line = assert_one_line_config_error(result, "host", "https://", "--allow-insecure-loopback-host")
    assert "clear text" in line
    await asyncio.sleep(0.5)  # anything sent late would arrive by now
    assert capture.requests == []  # no Basic client secret, no bearer: nothing at all


async def test_the_option_does_not_open_plain_http_beyond_loopback() -> None:
    env = {**BASE_ENV, "DATABRICKS_HOST": "http://ws.example.com"}
    result = await run_cli("check", "--allow-insecure-loopback-host", env=env)
    assert_one_line_config_error(result, "host", "only for a loopback host")


async def test_with_the_option_a_plain_http_emulator_serves_and_a_warning_is_logged(tmp_path: Path) -> None:
    async with Emulator(EmulatorSettings(tls=False)) as emu:
        env = {
            "DATABRICKS_HOST": emu.workspace_url,
            "DATABRICKS_CLIENT_ID": emu.client_id,
            "DATABRICKS_CLIENT_SECRET": emu.client_secret,
        }
        result = await run_cli("check", "--allow-insecure-loopback-host", "--endpoint", "plain-model", env=env)
        assert result.code == 0, result
        assert "plain http://" in result.stderr and "for local experiments only" in result.stderr
        assert emu.client_secret not in result.stderr + result.stdout
        assert emu.counters.snapshot()["token_grants"]["client_credentials"] >= 1


# --- check survives an absurd token lifetime --------------------------------------------------------


async def test_check_prints_the_expiry_of_a_token_said_to_live_1e300_seconds(
    emulator: Emulator, tmp_path: Path
) -> None:
    emulator.faults.token_answer_override = {"workspace": {"expires_in": 1e300}, "data_plane": {"expires_in": 1e300}}
    env = {
        "DATABRICKS_HOST": emulator.workspace_url,
        "DATABRICKS_CLIENT_ID": emulator.client_id,
        "DATABRICKS_CLIENT_SECRET": SECRET,
        "SERVING_SIDECAR_CA_BUNDLE": str(emulator.write_ca(tmp_path / "ca.pem")),
    }
    emulator.set_client_secret(emulator.client_id, SECRET)
    result = await run_cli("check", "--endpoint", "fraud-ro", env=env)
    assert result.code == 0, result
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    assert "(in 86400 s)" in rows["(workspace)"] and "(in 86400 s)" in rows["fraud-ro"]
    assert "Traceback" not in result.stderr
