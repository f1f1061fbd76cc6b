"""`--workers 2` with the parent in the test process: readiness follows the workers, a worker that cannot
be started again is retried under the restart policy, and a Unix-socket listener is served by both."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import stat
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import aiohttp
import pytest

from proxy.workers import supervisor
from proxy.workers.process import Child
from tests.integration.conftest import SidecarFactory, url

RECORDS = {"dataframe_records": [{"a": 2}]}


async def until(check: object, seconds: float = 20.0) -> None:
    for _ in range(int(seconds / 0.05)):
        if callable(check) and check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


async def test_readiness_follows_the_workers_and_a_failed_restart_is_retried(
    make_sidecar: SidecarFactory,
    client: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="serving_sidecar")
    async with make_sidecar(workers="2", endpoint=["fraud-ro"], drain_delay=0) as sidecar:
        assert sidecar.workers is not None and sidecar.health().ready
        async with client.post(url(sidecar, "/serving-endpoints/fraud-ro/invocations"), json=RECORDS) as resp:
            assert (resp.status, await resp.read()) == (200, b'{"predictions":[2]}')

        failures = []
        real_spawn = Child.spawn

        def failing_once(argv: Sequence[str], *, env: Mapping[str, str], pass_fds: Sequence[int] = ()) -> Child:
            if not failures:
                failures.append(1)
                raise OSError(24, "Too many open files")
            return real_spawn(argv, env=env, pass_fds=pass_fds)

        monkeypatch.setattr(supervisor.Child, "spawn", failing_once)
        victim = sidecar.workers.pids[0]
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        await until(lambda: not sidecar.health().ready)
        assert sidecar.health().reason() == "HTTP worker 1 of 2 not serving yet"

        await until(lambda: sidecar.health().ready)  # after one failed start, the next one serves
        assert failures == [1]
        assert "HTTP worker 1 could not be started ([Errno 24] Too many open files); trying again" in caplog.text
        replacement = sidecar.workers.pids[0]
        assert replacement is not None and replacement != victim
        async with client.post(url(sidecar, "/serving-endpoints/fraud-ro/invocations"), json=RECORDS) as resp:
            assert resp.status == 200


def requests_of(snapshot: dict[str, list[tuple[str, dict[str, str], float]]]) -> float:
    return sum(v for name, _, v in snapshot.get("serving_sidecar_requests", []) if name.endswith("_total"))


async def test_workers_serve_a_unix_socket_the_parent_made_and_removes(make_sidecar: SidecarFactory) -> None:
    with tempfile.TemporaryDirectory(prefix="ss-") as name:  # socket paths are limited to 107 bytes
        path = Path(name) / "http.sock"
        async with make_sidecar(workers="2", http_listen=f"unix:{path}", socket_mode="600") as sidecar:
            assert sidecar.workers is not None
            assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
            target = "http://localhost/serving-endpoints/fraud-ro/invocations"
            for _ in range(4):  # a new connection each time: handed out round robin
                connector = aiohttp.UnixConnector(path=str(path))
                async with (
                    aiohttp.ClientSession(connector=connector) as session,
                    session.post(target, json=RECORDS) as resp,
                ):
                    assert (resp.status, await resp.read()) == (200, b'{"predictions":[2]}')
            # both workers served (their counts arrive within a second)
            await until(lambda: [requests_of(s) for s in sidecar.workers.snapshots()[1:]] == [2, 2])
        assert not path.exists()
