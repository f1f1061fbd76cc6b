"""The README's gRPC example, run the way a user would: stubs generated from protos/, then the script."""

from __future__ import annotations

import asyncio
import re
import shlex
import sys
from pathlib import Path

from proxy.app import Sidecar

ROOT = Path(__file__).parents[2]
SECTION = re.search(r"^## gRPC\n(.*?)^## ", (ROOT / "README.md").read_text(), re.MULTILINE | re.DOTALL)


def blocks(language: str) -> list[str]:
    assert SECTION is not None, "README has no gRPC section"
    return re.findall(rf"^```{language}\n(.*?)^```", SECTION.group(1), re.MULTILINE | re.DOTALL)


async def run(*argv: str, cwd: Path) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, out.decode()
    return out.decode()


async def test_readme_python_client_example_works(sidecar: Sidecar, tmp_path: Path) -> None:
    protoc = next(line for block in blocks("sh") for line in block.splitlines() if "grpc_tools.protoc" in line)
    argv = shlex.split(protoc)
    assert argv[:3] == ["python", "-m", "grpc_tools.protoc"]
    (tmp_path / "protos").symlink_to(ROOT / "protos")
    await run(sys.executable, *argv[1:], cwd=tmp_path)

    [example] = blocks("python")
    script = tmp_path / "client.py"
    script.write_text(example.replace("127.0.0.1:8485", f"127.0.0.1:{sidecar.port('grpc')}"))
    out = await run(sys.executable, str(script), cwd=tmp_path)
    lines = out.splitlines()
    assert lines[0] == "[15.5] fraud-ro-1"
    assert len(lines) >= 3  # chat deltas, one per streamed event
