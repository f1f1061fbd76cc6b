"""Knob patches and planned failures (pure)."""

from __future__ import annotations

import pytest

from proxy.emulator.faults import Faults, FaultsError, apply_patch


def test_patch_is_a_merge() -> None:
    faults = Faults(latency={"a": 1.0})
    apply_patch(faults, {"latency": {"b": 2}, "token_outage": True, "close_after_requests": 3})
    assert faults.latency == {"a": 1.0, "b": 2.0}
    assert (faults.token_outage, faults.close_after_requests) == (True, 3)
    apply_patch(faults, {"latency": {"a": None}, "close_after_requests": None})
    assert (faults.latency, faults.close_after_requests) == ({"b": 2.0}, None)
    apply_patch(faults, {"latency": None})
    assert faults.latency == {}
    apply_patch(faults, {"answer_bytes": {"a": 10, "b": 0}})
    apply_patch(faults, {"answer_bytes": {"a": None, "c": 5}})
    assert faults.answer_bytes == {"b": 0, "c": 5}
    apply_patch(faults, {"answer_bytes": None})
    assert faults.answer_bytes == {}


@pytest.mark.parametrize(
    "patch",
    [
        {"latency": {"a": -1}},
        {"latency": [1]},
        {"token_latency": None},
        {"idle_close_after": "1"},
        {"close_after_requests": 1.5},
        {"planned_failures": [{"status": 429}]},
        {"dp_token_ttl": float("nan")},
        {"metadata_failures": {"fraud-ro": 404}},
        {"metadata_failures": ["fraud-ro"]},
        {"answer_bytes": {"a": -1}},
        {"answer_bytes": {"a": 1.5}},
        {"answer_bytes": {"a": True}},
        {"answer_bytes": [1]},
    ],
)
def test_bad_patches_change_nothing(patch: dict[str, object]) -> None:
    faults = Faults()
    before = faults.as_dict()
    with pytest.raises(FaultsError):
        apply_patch(faults, {"token_outage": True, **patch})
    assert faults.as_dict() == before


def test_metadata_failures_are_replaced_whole_and_cleared_by_null() -> None:
    faults = Faults()
    apply_patch(faults, {"metadata_failures": {"a": 429, "b": 503}})
    apply_patch(faults, {"metadata_failures": {"c": 500}})
    assert faults.as_dict()["metadata_failures"] == {"c": 500}
    apply_patch(faults, {"metadata_failures": None})
    assert faults.metadata_failures == {}


def test_planned_failures_are_fifo_and_endpoint_bound() -> None:
    faults = Faults()
    faults.fail_next(1, 503, endpoint="b")
    faults.fail_next(2, 429, retry_after=3)
    first = faults.take_failure("a")
    assert first is not None and (first.status, first.retry_after) == (429, 3)
    second = faults.take_failure("b")
    assert second is not None and second.status == 503
    assert faults.take_failure("b") is not None
    assert faults.take_failure("b") is None


@pytest.mark.parametrize(("count", "status", "retry_after"), [(0, 429, None), (1, 200, None), (1, 429, -1)])
def test_fail_next_validates(count: int, status: int, retry_after: int | None) -> None:
    with pytest.raises(FaultsError):
        Faults().fail_next(count, status, retry_after=retry_after)
