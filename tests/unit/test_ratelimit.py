"""The token bucket that bounds lookups of new endpoint names, on a fake clock."""

import pytest

from proxy.ratelimit import TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_then_the_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(10, 20, clock=clock)
    assert [bucket.take() for _ in range(21)] == [True] * 20 + [False]
    assert bucket.wait() == pytest.approx(0.1)
    clock.now += 0.5
    assert sum(bucket.take() for _ in range(10)) == 5
    assert not bucket.take()


def test_idle_time_saves_up_no_more_than_the_burst() -> None:
    clock = Clock()
    bucket = TokenBucket(10, 20, clock=clock)
    clock.now += 3600
    assert sum(bucket.take() for _ in range(100)) == 20
    assert "burst=20" in repr(bucket)


def test_a_clock_that_steps_back_adds_nothing() -> None:
    clock = Clock()
    bucket = TokenBucket(1, 1, clock=clock)
    assert bucket.take()
    clock.now -= 50
    assert not bucket.take()


@pytest.mark.parametrize(("rate", "burst"), [(0, 5), (1, 0.5)])
def test_nonsense_parameters_are_refused(rate: float, burst: float) -> None:
    with pytest.raises(ValueError, match="token bucket"):
        TokenBucket(rate, burst)
