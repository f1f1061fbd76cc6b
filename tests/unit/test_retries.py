import pytest

from proxy.retries import RetryPolicy, backoff, decide, parse_retry_after

POLICY = RetryPolicy(attempts=3, budget=10.0, idempotent=frozenset({"safe"}))


@pytest.mark.parametrize(("status", "reason"), [(429, "throttled"), (503, "unavailable")])
def test_throttling_and_unavailable_are_retried_with_backoff(status: int, reason: str) -> None:
    decision = decide(POLICY, endpoint="e", attempt=1, waited=0, status=status, jitter=1.0)
    assert decision.retry and decision.reason == reason
    assert decision.delay == backoff(1, 1.0)


def test_integer_retry_after_is_honoured_within_budget() -> None:
    decision = decide(POLICY, endpoint="e", attempt=1, waited=0, status=429, retry_after="3")
    assert decision.retry and decision.delay == 3
    over = decide(POLICY, endpoint="e", attempt=1, waited=8, status=429, retry_after="3")
    assert not over.retry  # the upstream's own 429 goes back


def test_attempts_are_bounded() -> None:
    assert not decide(POLICY, endpoint="e", attempt=3, waited=0, status=503).retry


@pytest.mark.parametrize("status", [500, 502, 504])
def test_unsafe_statuses_only_for_idempotent_endpoints(status: int) -> None:
    assert not decide(POLICY, endpoint="e", attempt=1, waited=0, status=status).retry
    assert decide(POLICY, endpoint="safe", attempt=1, waited=0, status=status).retry


def test_timeouts_only_for_idempotent_endpoints_and_connect_failures_always() -> None:
    assert not decide(POLICY, endpoint="e", attempt=1, waited=0, failure="timeout").retry
    assert decide(POLICY, endpoint="safe", attempt=1, waited=0, failure="timeout").retry
    assert decide(POLICY, endpoint="e", attempt=1, waited=0, failure="connect").reason == "connect_failed"


@pytest.mark.parametrize("status", [200, 400, 401, 403, 404, 413])
def test_other_statuses_are_never_retried(status: int) -> None:
    assert not decide(POLICY, endpoint="safe", attempt=1, waited=0, status=status).retry


def test_backoff_is_capped_and_retry_after_parsing_ignores_dates() -> None:
    assert backoff(1, 1.0) == 0.1 and backoff(10, 1.0) == 2.0
    assert parse_retry_after(" 7 ") == 7
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") is None
    assert parse_retry_after(None) is None
    assert parse_retry_after("²") is None  # a digit to str.isdigit, not to int()
