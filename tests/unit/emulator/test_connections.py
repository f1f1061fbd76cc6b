"""Connection-knob decisions and the registry (pure)."""

from __future__ import annotations

from proxy.emulator.connections import ConnectionState, is_idle_expired, should_drop
from proxy.emulator.counters import Counters
from proxy.emulator.endpoints import Registry
from proxy.emulator.faults import Faults
from proxy.emulator.settings import EndpointSpec


def _state(plane: str = "data_plane", **kwargs: float) -> ConnectionState:
    return ConnectionState(plane=plane, port=1, opened_at=0, last_active=0, **kwargs)  # type: ignore[arg-type]


def test_should_drop_after_n_requests() -> None:
    faults = Faults(close_after_requests=2)
    assert not should_drop(_state(requests=1), faults)
    assert should_drop(_state(requests=2), faults)
    assert not should_drop(_state("control_plane", requests=5), faults)
    faults.connection_faults_on_control_plane = True
    assert should_drop(_state("control_plane", requests=5), faults)
    assert not should_drop(_state(requests=9), Faults())


def test_idle_expiry() -> None:
    faults = Faults(idle_close_after=1.0)
    assert not is_idle_expired(_state(), faults, now=1.0)
    assert is_idle_expired(_state(), faults, now=1.01)
    assert not is_idle_expired(_state(in_flight=1), faults, now=9)
    assert not is_idle_expired(_state(), Faults(), now=9)


def test_registry_incarnations() -> None:
    registry = Registry("42")
    first = registry.add(EndpointSpec("a", "custom"), port=10, now_ms=0)
    second = registry.add(first.spec, port=11, now_ms=1)
    assert first.endpoint_id != second.endpoint_id
    assert registry.get("a") is second
    assert registry.by_port(10) is first
    assert not registry.is_current(first)
    assert registry.current_by_id(first.endpoint_id) is None
    assert registry.current_by_id(second.endpoint_id) is second
    assert Registry("42").add(first.spec, port=None, now_ms=0).endpoint_id == first.endpoint_id
    assert "a=" in repr(registry)


def test_counters_snapshot_shape_and_reset() -> None:
    counters = Counters()
    counters.grant("jwt_bearer", "data_plane")
    counters.invocation("e", 200)
    counters.invocations_in_flight = 2
    snapshot = counters.snapshot()
    assert snapshot["token_grants"] == {"client_credentials": 0, "jwt_bearer": 1, "token_exchange": 0}
    assert snapshot["invocations"] == {"e": {"200": 1}}
    counters.reset()
    assert counters.snapshot()["invocations"] == {}
    assert counters.invocations_in_flight == 2
