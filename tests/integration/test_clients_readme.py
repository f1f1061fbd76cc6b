"""The README's Clients examples, run as a user would: each block as a script or shell command against a sidecar.

Blocks are found by their `<!-- example: NAME -->` marker; the README's addresses (127.0.0.1:8484, the
/run/serving-sidecar sockets) are replaced by the test sidecar's.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.app import Sidecar
from proxy.emulator import Emulator

from .conftest import SidecarFactory

ROOT = Path(__file__).parents[2]
README = (ROOT / "README.md").read_text()
SECTION = re.search(r"^## Clients\n(.*?)^## ", README, re.MULTILINE | re.DOTALL)
EXAMPLES = dict(
    re.findall(r"^<!-- example: ([\w-]+) -->\n```\w+\n(.*?)^```", SECTION.group(1) if SECTION else "", re.M | re.S)
)
EXPECTED = {
    "curl": ['{"predictions":[15.5]}'],
    "requests": ["[15.5] fraud-ro-1"],
    "sdk-query": ["READY", "[15.5]"],
    "sdk-data-plane": ["[15.5] fraud-ro-1"],
    "mlflow": ["{'predictions': [15.5]}", "echo: hello there"],
    "openai": ["echo: hello there\necho: hello there\n2 8\necho: hello there"],
    "unix": ['{"predictions":[15.5]}'],
}


@pytest.fixture
def user_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a user with no Databricks configuration of their own."""
    prefixes = ("DATABRICKS_", "ARM_", "AZURE_", "GOOGLE_", "MLFLOW_", "OPENAI_")
    env = {key: value for key, value in os.environ.items() if not key.startswith(prefixes)}
    return {**env, "HOME": str(tmp_path), "DATABRICKS_CONFIG_FILE": str(tmp_path / "missing.cfg")}


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="ss-") as name:
        yield Path(name)


async def run_example(name: str, replacements: dict[str, str], env: dict[str, str], cwd: Path) -> str:
    code = EXAMPLES[name]
    for old, new in replacements.items():
        code = code.replace(old, new)
    language = "python" if "import " in code else "sh"
    argv = [sys.executable, "-c", code] if language == "python" else ["bash", "-euo", "pipefail", "-c", code]
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    text = out.decode()
    assert proc.returncode == 0, text
    return text


def test_every_client_has_a_tested_example() -> None:
    assert sorted(EXAMPLES) == sorted(EXPECTED)


@pytest.mark.parametrize("name", [name for name in EXPECTED if name != "unix"])
async def test_readme_client_example(
    name: str, emu: Emulator, sidecar: Sidecar, user_env: dict[str, str], tmp_path: Path
) -> None:
    out = await run_example(name, {"127.0.0.1:8484": f"127.0.0.1:{sidecar.port('http')}"}, user_env, tmp_path)
    for expected in EXPECTED[name]:
        assert expected in out
    assert "host metadata" not in out  # no warning from the SDK (nor MLflow through it)
    assert emu.counters.snapshot()["bearer_tokens"]["foreign"] == 0


async def test_readme_unix_socket_example(
    make_sidecar: SidecarFactory, user_env: dict[str, str], socket_dir: Path, tmp_path: Path
) -> None:
    path = socket_dir / "http.sock"
    async with make_sidecar(http_listen=f"unix:{path}"):
        out = await run_example("unix", {"/run/serving-sidecar/http.sock": str(path)}, user_env, tmp_path)
    assert EXPECTED["unix"][0] in out
