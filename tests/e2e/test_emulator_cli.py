"""``serving-sidecar emulator`` as a subprocess: start, describe, serve, SIGTERM, exit codes."""

from __future__ import annotations

import json
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

COMMAND = [sys.executable, "-m", "proxy", "emulator"]


def _start(*args: str) -> tuple[subprocess.Popen[str], dict[str, str]]:
    proc = subprocess.Popen([*COMMAND, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    lines: dict[str, str] = {}
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = proc.stdout.readline().strip()
        if line == "ready" or not line:
            break
        key, _, value = line.partition(": ")
        lines[key] = value
    return proc, lines


def _stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=10)
    assert "Traceback" not in stderr
    return proc.returncode


def test_https_emulator_prints_urls_serves_and_exits_zero_on_sigterm(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    config = tmp_path / "emulator.yaml"
    config.write_text("endpoints:\n  - {name: demo, kind: custom}\n")
    proc, info = _start("--control-port", "0", "--ca-out", str(ca), "--config", str(config), "--latency", "demo=0.01")
    try:
        assert info["workspace_url"].startswith("https://127.0.0.1:")
        assert info["ca_file"] == str(ca)
        assert info["client_id"] == "sidecar-sp"
        assert info["endpoint demo"].endswith("/serving-endpoints/demo/invocations (custom, route-optimized)")
        context = ssl.create_default_context(cafile=str(ca))
        with urllib.request.urlopen(info["workspace_url"] + "/_emulator/faults", context=context) as resp:
            assert json.load(resp)["latency"] == {"demo": 0.01}
    finally:
        code = _stop(proc)
    assert code == 0


def test_plain_http_flag(tmp_path: Path) -> None:
    proc, info = _start("--plain-http", "--control-port", "0", "--client-id", "me", "--client-secret", "pw")
    try:
        assert info["workspace_url"].startswith("http://127.0.0.1:")
        assert info["ca_file"] == "none (plain http)"
        assert (info["client_id"], info["client_secret"]) == ("me", "pw")
        with urllib.request.urlopen(info["workspace_url"] + "/.well-known/databricks-config") as resp:
            assert json.load(resp)["workspace_id"] == "1444828305810485"
    finally:
        assert _stop(proc) == 0


@pytest.mark.parametrize(
    ("text", "args"),
    [
        ("endpoints: [{name: x", []),
        ("endpoints:\n  - {name: x, kind: sql}\n", []),
        ("endpoints:\n  - {name: x, kind: custom}\n", ["--latency", "y=1"]),
    ],
)
def test_bad_config_is_one_line_and_exit_code_2(tmp_path: Path, text: str, args: list[str]) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    result = subprocess.run(
        [*COMMAND, "--config", str(config), *args], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("serving-sidecar emulator: error: ")
    assert "Traceback" not in result.stderr
