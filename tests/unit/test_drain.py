"""The drain sequence with fake listeners: order, grace periods, hooks. No sockets."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from proxy import config
from proxy.app import ADMIN, ADMIN_GRACE, Sidecar

ENV = {"DATABRICKS_HOST": "ws.example.com", "DATABRICKS_CLIENT_ID": "sp", "DATABRICKS_CLIENT_SECRET": "s"}


@dataclass
class FakeListener:
    name: str
    events: list[str]
    port: int = 1
    graces: list[float] = field(default_factory=list)

    async def stop(self, grace: float) -> None:
        self.events.append(f"stop {self.name}")
        self.graces.append(grace)


def sidecar_with_fakes(tmp_path: Path, events: list[str], **flags: object) -> tuple[Sidecar, dict[str, FakeListener]]:
    sidecar = Sidecar(config.load(flags, environ=ENV, home=tmp_path))
    fakes = {name: FakeListener(name, events) for name in (ADMIN, "http", "grpc")}
    sidecar._listeners.update(fakes)
    sidecar._started = True
    return sidecar, fakes


async def test_drain_turns_unready_first_and_stops_admin_last(tmp_path: Path) -> None:
    events: list[str] = []
    sidecar, fakes = sidecar_with_fakes(tmp_path, events, drain_delay=0.01, drain_timeout=7.0)
    sidecar.on_drain.append(lambda: events.append(f"hook draining={sidecar.health().draining}"))
    sidecar.metrics.ready.set(1)
    await sidecar.drain()
    assert events[0] == "hook draining=True"
    assert set(events[1:3]) == {"stop http", "stop grpc"}
    assert events[3:] == ["stop admin"]
    assert fakes["http"].graces == fakes["grpc"].graces == [7.0]
    assert fakes[ADMIN].graces == [ADMIN_GRACE]
    assert sidecar.metrics.registry.get_sample_value("serving_sidecar_ready") == 0
    health = sidecar.health()
    assert not health.ready and health.reason() == "draining"


async def test_hooks_run_once_and_a_failing_hook_does_not_stop_the_drain(tmp_path: Path) -> None:
    events: list[str] = []
    sidecar, _ = sidecar_with_fakes(tmp_path, events, drain_delay=0)

    def broken() -> None:
        raise RuntimeError("hook bug")

    sidecar.on_drain.extend([broken, lambda: events.append("hook")])
    sidecar.begin_draining()
    sidecar.begin_draining()
    await sidecar.stop()
    assert events.count("hook") == 1
    assert events[-1] == "stop admin"
