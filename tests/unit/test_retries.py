import pytest

from proxy.errors import (
    BadMetadata,
    ConnectFailed,
    NoCredential,
    SidecarError,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from proxy.retries import (
    Outcome,
    RetryBudget,
    RetryPolicy,
    backoff,
    client_retry_headers,
    decide,
    may_have_run,
    parse_retry_after,
)

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


# --- the shared retry budget ---------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_budget_allows_the_floor_without_requests_then_refuses() -> None:
    budget = RetryBudget(ratio=0.2, min_per_second=1.0, window=10.0, clock=Clock())
    assert [budget.try_retry() for _ in range(11)] == [True] * 10 + [False]


def test_the_budget_grows_with_requests_by_the_ratio() -> None:
    budget = RetryBudget(ratio=0.2, min_per_second=0.0, window=10.0, clock=Clock())
    for _ in range(100):
        budget.record_request()
    assert sum(budget.try_retry() for _ in range(100)) == 20
    assert "requests=100, retries=20" in repr(budget)


def test_old_requests_and_retries_leave_the_window() -> None:
    clock = Clock()
    budget = RetryBudget(ratio=0.5, min_per_second=0.0, window=10.0, clock=clock)
    for _ in range(10):
        budget.record_request()
    assert sum(budget.try_retry() for _ in range(10)) == 5
    clock.now += 11  # both the requests and the retries are older than the window
    assert not budget.try_retry()
    budget.record_request()
    budget.record_request()
    assert budget.try_retry() and not budget.try_retry()


def test_a_storm_is_bounded_by_ratio_plus_floor() -> None:
    """A minute of 50 requests a second, each wanting 4 retries: retries stay within 20% plus the floor."""
    clock = Clock()
    budget = RetryBudget(ratio=0.2, min_per_second=5.0, window=10.0, clock=clock)
    requests = retries_made = 0
    for _ in range(60 * 50):
        clock.now += 0.02
        budget.record_request()
        requests += 1
        retries_made += sum(budget.try_retry() for _ in range(4))
    assert retries_made <= 0.2 * requests + 5.0 * (60 + 10)
    assert retries_made >= 0.2 * requests  # the ratio is used, not just the floor


def test_zero_ratio_and_floor_turn_retries_off() -> None:
    budget = RetryBudget(ratio=0.0, min_per_second=0.0, clock=Clock())
    budget.record_request()
    assert not budget.try_retry()


# --- advice to clients -----------------------------------------------------------------------------------


def test_no_advice_for_successes_and_first_hand_answers() -> None:
    assert client_retry_headers(200, Outcome(sent=True, retried=True)) == []
    assert client_retry_headers(429, Outcome(sent=True)) == []  # not retried: the client may, after Retry-After
    assert client_retry_headers(503, Outcome(sent=True)) == []


def test_what_the_sidecar_retried_or_its_budget_refused_is_not_retried_again() -> None:
    assert client_retry_headers(429, Outcome(sent=True, retried=True)) == [("x-should-retry", "false")]
    assert client_retry_headers(429, Outcome(sent=True, budget_spent=True)) == [("x-should-retry", "false")]
    failed = ConnectFailed("no route")
    assert client_retry_headers(502, Outcome(sent=True, retried=True), failed) == [("x-should-retry", "false")]


@pytest.mark.parametrize("status", [500, 502, 504])
def test_what_may_have_run_is_not_retried_unless_idempotent(status: int) -> None:
    assert client_retry_headers(status, Outcome(sent=True)) == [("x-should-retry", "false")]
    assert client_retry_headers(status, Outcome(sent=True, idempotent=True)) == []


@pytest.mark.parametrize(
    ("error", "ran"),
    [
        (UpstreamTimeout("slow"), True),
        (UpstreamUnreachable("connection dropped"), True),
        (ConnectFailed("refused"), False),
        (BadMetadata("http url"), False),
        (NoCredential("token server down", retry_after=5), False),
    ],
)
def test_sidecar_errors_after_a_send_may_have_run_when_the_request_reached_the_model(
    error: SidecarError, ran: bool
) -> None:
    assert may_have_run(error.status, Outcome(sent=True), error) is ran
    assert not may_have_run(error.status, Outcome(sent=False), error)  # a lookup failure: nothing was sent
