import pytest

from proxy.credentials import schedule


def test_long_tokens_refresh_at_half_life_capped_at_20_minutes() -> None:
    assert schedule.lead(600) == 300
    assert schedule.lead(3600) == 1200
    assert schedule.refresh_at(0, 3600) == 2400


def test_short_tokens_refresh_before_they_become_unusable() -> None:
    # a 70 s token: half the life (35 s) would already be inside the 40 s unusable margin
    lead = schedule.lead(70)
    assert lead >= schedule.UNUSABLE_MARGIN + schedule.REFRESH_ALLOWANCE
    assert schedule.refresh_at(0, 70) < 70 - schedule.UNUSABLE_MARGIN
    # tokens too short for the rules: refreshed MIN_REFRESH_INTERVAL after they came, not in a loop
    assert schedule.refresh_at(100, 110) == 100 + schedule.MIN_REFRESH_INTERVAL


def test_usable_until_40_seconds_before_expiry() -> None:
    assert schedule.is_usable(59, 100)
    assert not schedule.is_usable(60, 100)


@pytest.mark.parametrize(("failures", "expected"), [(1, 1), (2, 2), (3, 4), (7, 60), (30, 60)])
def test_backoff_is_exponential_and_capped(failures: int, expected: float) -> None:
    assert schedule.backoff(failures, jitter=1.0) == expected


@pytest.mark.parametrize(("failures", "expected"), [(1, 5), (2, 10), (3, 20), (4, 30), (1000, 30)])
def test_configuration_errors_start_slower_and_are_capped_at_30_s(failures: int, expected: float) -> None:
    assert schedule.backoff(failures, configuration_error=True, jitter=1.0) == expected
    assert 0.9 <= schedule.backoff(1) <= 1.1


def test_the_cap_holds_with_jitter() -> None:
    """A fixed principal is picked up within 30 s: jitter never pushes a configuration-error wait past it."""
    assert max(schedule.backoff(9, configuration_error=True) for _ in range(200)) <= 30.0
    assert schedule.backoff(9, configuration_error=True, jitter=1.1) == 30.0
    assert schedule.backoff(9, jitter=1.1) == 60.0
