"""Worker processes as the parent starts them: posix_spawn, exit noticed through a pidfd (or by polling)."""

from __future__ import annotations

import os
import signal
import sys

import pytest

from proxy.workers.process import Child
from proxy.workers.supervisor import describe_exit, worker_environment


async def test_exit_codes_and_signals_are_reported_as_subprocess_does() -> None:
    child = Child.spawn([sys.executable, "-c", "import sys; sys.exit(3)"], env=os.environ)
    assert await child.wait() == 3
    assert await child.wait() == 3  # reaped once, remembered
    sleeper = Child.spawn([sys.executable, "-c", "import time; time.sleep(60)"], env=os.environ)
    sleeper.kill()
    assert await sleeper.wait() == -9
    sleeper.kill()  # already gone: nothing is signalled
    assert describe_exit(-9) == "was killed by SIGKILL" and describe_exit(3) == "exited with code 3"


async def test_only_the_passed_descriptors_are_inherited() -> None:
    passed_r, passed_w = os.pipe()
    other_r, other_w = os.pipe()
    script = (
        f"import os, sys\nos.write({passed_w}, b'ok')\ntry:\n    os.fstat({other_w})\nexcept OSError:\n    sys.exit(7)"
    )
    child = Child.spawn([sys.executable, "-c", script], env=os.environ, pass_fds=[passed_w])
    assert await child.wait() == 7
    assert os.read(passed_r, 2) == b"ok"
    assert not os.get_inheritable(passed_w)  # only for the spawn
    for fd in (passed_r, passed_w, other_r, other_w):
        os.close(fd)


async def test_without_pidfd_the_exit_is_noticed_by_polling(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_pidfd(pid: int) -> int:
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(os, "pidfd_open", no_pidfd)
    child = Child.spawn([sys.executable, "-c", "import time; time.sleep(60)"], env=os.environ)
    child.send_signal(signal.SIGTERM)
    assert await child.wait() == -15


def test_workers_get_no_credentials_or_sidecar_options_from_the_environment() -> None:
    environ = {
        "PATH": "/usr/bin",
        "DATABRICKS_CLIENT_SECRET": "s",
        "DATABRICKS_HOST": "h",
        "SERVING_SIDECAR_WORKERS": "2",
        "HOME": "/root",
    }
    assert worker_environment(environ) == {"PATH": "/usr/bin", "HOME": "/root"}
