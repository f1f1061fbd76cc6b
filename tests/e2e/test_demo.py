"""`serving-sidecar demo` (what `make run` starts): the check command it prints works; a busy port is one line."""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.e2e.conftest import free_port

REPO = Path(__file__).resolve().parents[2]


def demo(*args: str) -> subprocess.Popen[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DATABRICKS_", "SERVING_SIDECAR_"))}
    return subprocess.Popen(
        [sys.executable, "-m", "proxy", "demo", *args],
        cwd=REPO,
        env={**clean, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def ports() -> list[str]:
    return [
        *("--http-listen", f"127.0.0.1:{free_port()}"),
        *("--grpc-listen", f"127.0.0.1:{free_port()}"),
        *("--admin-listen", f"127.0.0.1:{free_port()}"),
    ]


def banner(process: subprocess.Popen[str]) -> list[str]:
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 30
    while not lines or lines[-1] != "press Ctrl-C to stop":
        assert time.monotonic() < deadline and process.poll() is None, f"no banner: {lines}"
        lines.append(process.stdout.readline().rstrip("\n"))
    return lines


def test_the_printed_check_command_works_as_pasted() -> None:
    process = demo(*ports())
    try:
        lines = banner(process)
        [check] = [line.strip() for line in lines if " check " in line]
        argv = shlex.split(check)
        command = REPO / argv[0]
        assert command.is_file(), f"{argv[0]} is not this installation's command"
        assert f"the commands are in {Path(argv[0]).parent}/" in "\n".join(lines)
        assert argv[argv.index("--client-id") + 1] == "sidecar-sp"
        secret_file = Path(argv[argv.index("--client-secret-file") + 1])
        assert secret_file.stat().st_mode & 0o077 == 0, "the secret file is private"
        assert secret_file.read_text().strip() not in "\n".join(lines), "the banner names the file, not the secret"
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("DATABRICKS_", "SERVING_SIDECAR_"))}
        clean["HTTPS_PROXY"] = "http://127.0.0.1:9"  # a shell behind an egress proxy: the demo's check ignores it
        done = subprocess.run(argv, cwd=REPO, env=clean, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "fraud-ro     route-optimized" in done.stdout
    finally:
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert not secret_file.exists(), "the demo removes the files it wrote"


def test_a_busy_port_is_one_line_and_exit_2() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        address = f"127.0.0.1:{busy.getsockname()[1]}"
        for option in ("--http-listen", "--grpc-listen", "--admin-listen"):
            args = ports()
            args[args.index(option) + 1] = address
            process = demo(*args)
            out, err = process.communicate(timeout=60)
            assert process.returncode == 2, err
            assert out == ""
            [line] = err.strip().splitlines()
            assert line.startswith(f"serving-sidecar demo: {option} {address}: address already in use"), line
