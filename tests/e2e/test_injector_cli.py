"""`serving-sidecar injector` as a process: serves HTTPS until SIGTERM (exit 0); unusable flags or files exit 2."""

from __future__ import annotations

import json
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import trustme

from tests.e2e.conftest import free_port
from tests.integration.test_injector import LABELLED, pod, review, write_certificate


def injector(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "proxy", "injector", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_serves_reviews_until_sigterm(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert, key = write_certificate(ca, tmp_path)
    port = free_port()
    process = injector("--listen", f"127.0.0.1:{port}", "--tls-cert", str(cert), "--tls-key", str(key))
    context = ssl.create_default_context()
    ca.configure_trust(context)
    body = json.dumps(review(pod(LABELLED), uid="cli-1")).encode()
    request = urllib.request.Request(f"https://127.0.0.1:{port}/mutate", data=body, method="POST")
    deadline = time.monotonic() + 20
    while True:
        assert process.poll() is None, process.communicate()
        try:
            with urllib.request.urlopen(request, context=context, timeout=5) as answer:
                response = json.loads(answer.read())["response"]
                break
        except OSError:
            assert time.monotonic() < deadline, "the injector never answered"
            time.sleep(0.1)
    assert response["uid"] == "cli-1" and response["patchType"] == "JSONPatch"
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=20)
    assert process.returncode == 0, err
    assert "pod shop/shop-7c9d8-: injected" in err


def test_unusable_flags_and_files_exit_2(tmp_path: Path) -> None:
    cert, key = write_certificate(trustme.CA(), tmp_path)
    for args, expected in (
        (["--tls-cert", str(tmp_path / "missing.crt"), "--tls-key", str(key)], "cannot serve"),
        (["--tls-cert", str(key), "--tls-key", str(cert)], "cannot serve"),
        (["--tls-cert", str(cert), "--tls-key", str(key), "--auth", "workload-identity"], "--token-audience"),
        (["--tls-cert", str(cert), "--tls-key", str(key), "--listen", "nowhere"], "listen"),
    ):
        process = injector("--listen", f"127.0.0.1:{free_port()}", *args)
        _, err = process.communicate(timeout=20)
        assert process.returncode == 2, (args, err)
        assert expected in err and "Traceback" not in err, err
