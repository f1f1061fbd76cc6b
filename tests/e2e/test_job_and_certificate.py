"""The Job example's script and the injector's certificate script, run for real (not only validated)."""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
import yaml

from proxy.config import Address
from proxy.inject import InjectOptions
from proxy.injector import Injector
from tests.e2e.conftest import Launch
from tests.e2e.test_deploy_artifacts import KUSTOMIZE_DIR, kustomize, run_ok

BIN = Path(sys.executable).parent


def job_script() -> str:
    docs = [doc for doc in yaml.safe_load_all(run_ok(kustomize(), "build", str(KUSTOMIZE_DIR / "job"))) if doc]
    [job] = [d for d in docs if d["kind"] == "Job"]
    [batch] = [c for c in job["spec"]["template"]["spec"]["containers"] if c["name"] == "batch"]
    assert batch["command"] == ["/bin/sh", "-c"]
    [script] = batch["args"]
    return str(script)


async def run_script(script: str, env: dict[str, str]) -> tuple[int, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DATABRICKS_", "SERVING_SIDECAR_"))}
    proc = await asyncio.create_subprocess_exec(
        "/bin/sh",
        "-c",
        script,
        env={**clean, "PATH": f"{BIN}:{clean['PATH']}", **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


@pytest.mark.parametrize(("endpoint", "succeeds"), [("fraud-ro", True), ("no-such-endpoint", False)])
async def test_the_job_script_waits_works_and_stops_the_sidecar(
    launch: Launch, tmp_path: Path, endpoint: str, succeeds: bool
) -> None:
    sidecar = await launch("--drain-delay", "0", ready=False)  # the script's `wait` does the waiting
    config = tmp_path / "config.yaml"
    config.write_text(f"admin_listen: 127.0.0.1:{sidecar.admin_port}\n")
    env = {
        "SERVING_SIDECAR_CONFIG": str(config),
        "SERVING_SIDECAR_URL": f"http://127.0.0.1:{sidecar.http_port}",
        "SERVING_SIDECAR_ADMIN_URL": f"http://127.0.0.1:{sidecar.admin_port}",
        "SERVING_ENDPOINT": endpoint,
    }
    code, output = await run_script(job_script(), env)
    if succeeds:
        assert code == 0, output
        assert output.count('{"predictions":') == 3, output
    else:
        assert code != 0, output
        assert "HTTP Error 404" in output
    assert await sidecar.wait(30) == 0, "stopped by POST /quitquitquit whatever the job's outcome"
    assert "POST /quitquitquit: draining" in sidecar.log()


async def test_make_certificate_gives_a_certificate_the_injector_serves(tmp_path: Path) -> None:
    script = KUSTOMIZE_DIR / "injector" / "make-certificate.sh"
    out = tmp_path / "certs"
    done = await asyncio.to_thread(
        subprocess.run,
        ["bash", str(script), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["ca.crt", "tls.crt", "tls.key"], "the CA key is gone"
    assert out.joinpath("tls.key").stat().st_mode & 0o077 == 0
    injector = Injector(InjectOptions(), Address("127.0.0.1", 0), out / "tls.crt", out / "tls.key")
    await injector.start()
    try:
        context = ssl.create_default_context(cafile=str(out / "ca.crt"))
        url = f"https://127.0.0.1:{injector.port}/healthz"
        async with aiohttp.ClientSession() as session:
            for name in (
                "serving-sidecar-injector.serving-sidecar.svc",
                "serving-sidecar-injector.serving-sidecar.svc.cluster.local",
            ):
                async with session.get(url, ssl=context, server_hostname=name) as resp:
                    assert resp.status == 200
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await session.get(url, ssl=context, server_hostname="serving-sidecar-injector.other.svc")
    finally:
        await injector.stop()
