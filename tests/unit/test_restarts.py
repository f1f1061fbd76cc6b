"""The restart policy of `--workers`: fast first restarts, at most LIMIT per WINDOW, crash-looping reported."""

from __future__ import annotations

import pytest

from proxy.workers.restarts import Restarts


def test_first_exits_restart_soon_with_a_growing_delay() -> None:
    restarts = Restarts(limit=5, window=60.0)
    assert [restarts.exited(now) for now in (0.0, 1.0, 2.0, 3.0)] == [0.1, 0.2, 0.4, 0.8]
    assert not restarts.crash_looping(3.0)


def test_the_limit_within_the_window_holds_restarts_back_until_the_oldest_exit_leaves_it() -> None:
    restarts = Restarts(limit=5, window=60.0)
    for now in (0.0, 1.0, 2.0, 3.0):
        restarts.exited(now)
    assert restarts.exited(4.0) == pytest.approx(56.0)  # the exit at 0 s leaves the window at 60 s
    assert restarts.crash_looping(4.0)
    assert restarts.crash_looping(59.9)
    assert not restarts.crash_looping(60.1)
    assert restarts.exited(61.0) == pytest.approx(0.0)  # 5 within the window again: the one at 1 s leaves at 61 s
    assert restarts.crash_looping(61.0)


def test_exits_spread_over_time_never_count_as_a_loop() -> None:
    restarts = Restarts(limit=5, window=60.0)
    for minute in range(20):
        assert restarts.exited(minute * 61.0) == 0.1
        assert not restarts.crash_looping(minute * 61.0)
    assert "limit 5 per 60 s" in repr(restarts)
