"""`serving-sidecar check` and `run` configuration errors, as a subprocess against the emulator."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from proxy.emulator import Emulator


async def run_cli(*args: str, env: dict[str, str]) -> tuple[int, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DATABRICKS_", "SERVING_SIDECAR_"))}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        *args,
        env={**clean, "HOME": env.pop("HOME", clean.get("HOME", "/nonexistent")), **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(60):
        out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


def workspace_env(emulator: Emulator, ca: Path, secret: str | None = None) -> dict[str, str]:
    return {
        "DATABRICKS_HOST": emulator.workspace_url,
        "DATABRICKS_CLIENT_ID": emulator.client_id,
        "DATABRICKS_CLIENT_SECRET": secret or emulator.client_secret,
        "SERVING_SIDECAR_CA_BUNDLE": str(ca),
    }


async def test_check_prints_a_table_and_exits_zero(emulator: Emulator, emulator_ca_file: Path) -> None:
    code, out = await run_cli(
        "check", "--endpoint", "fraud-ro", "--endpoint", "plain-model", env=workspace_env(emulator, emulator_ca_file)
    )
    assert code == 0, out
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert "route-optimized" in lines["fraud-ro"] and "plain" in lines["plain-model"]
    assert "in 3" in lines["fraud-ro"]  # token expiry, about an hour away


async def test_check_fails_with_the_reason_and_never_prints_the_secret(
    emulator: Emulator, emulator_ca_file: Path
) -> None:
    wrong = "wrong-secret-9c1e4d"
    code, out = await run_cli("check", env=workspace_env(emulator, emulator_ca_file, secret=wrong))
    assert code == 1
    assert "invalid_client" in out
    assert wrong not in out


async def test_check_names_an_unknown_endpoint(emulator: Emulator, emulator_ca_file: Path) -> None:
    code, out = await run_cli("check", "--endpoint", "nope", env=workspace_env(emulator, emulator_ca_file))
    assert code == 1
    assert "nope" in out and "does not exist" in out


async def test_personal_access_token_and_bad_config_exit_2(tmp_path: Path) -> None:
    code, out = await run_cli("run", env={"DATABRICKS_HOST": "https://ws.example.com", "DATABRICKS_TOKEN": "dapi1"})
    assert code == 2 and "OAuth tokens only" in out and "dapi1" not in out
    bad = tmp_path / "c.yaml"
    bad.write_text("http_listen: [\n")
    code, out = await run_cli("run", "--config", str(bad), env={})
    assert code == 2 and "not valid YAML" in out and "Traceback" not in out
