"""Retry decisions: for one invocation, for all of them together, and the advice given to clients. Pure: the
forwarder does the waiting and the sending, the fronts write the headers.

Rules (no duplicate inference by default):
1. 429 and 503 mean the model did not run: retry, waiting an integer `Retry-After` when the upstream gives
   one, else capped exponential backoff with jitter; at most `attempts` sends and `budget` seconds of
   waiting in all. A wait that would overrun the budget is not taken: the upstream's own answer goes back.
2. A failed connect sent nothing: retried like a 503.
3. 500, 502, 504 and timeouts may mean the model ran: retried only for endpoints configured idempotent.
4. Everything else (and anything after response bytes went downstream) is never retried here.
5. Retries share one budget (`RetryBudget`, as Linkerd's and Envoy's): over the last `window` seconds they
   may number at most `ratio` x the requests plus `min_per_second` x `window`. A retry the budget refuses
   is not made: the upstream's own answer goes back at once, so a sustained throttle is not multiplied.
6. Clients are told not to send again what the sidecar already retried, what its budget refused, or what
   may have run (`client_retry_headers`); `Retry-After` says when retrying later is right.
"""

from __future__ import annotations

import math
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from proxy.errors import BadMetadata, ConnectFailed, SidecarError, UpstreamTimeout, UpstreamUnreachable

BACKOFF_START = 0.1
BACKOFF_CAP = 2.0
SAFE_STATUSES = frozenset({429, 503})
UNSAFE_STATUSES = frozenset({500, 502, 504})
REASONS = {429: "throttled", 503: "unavailable", 500: "server_error", 502: "server_error", 504: "timeout"}


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5  # sends in all, the first included
    budget: float = 10.0  # seconds of waiting between sends, in all
    idempotent: frozenset[str] = frozenset()  # endpoints whose answers may be recomputed safely


@dataclass(frozen=True)
class Decision:
    retry: bool
    delay: float = 0.0
    reason: str = ""


NO_RETRY = Decision(False)


def backoff(attempt: int, jitter: float) -> float:
    """Wait before send number `attempt + 1` (attempt >= 1), jitter in [0.5, 1]."""
    return min(BACKOFF_CAP, BACKOFF_START * 2.0 ** (attempt - 1)) * jitter


def parse_retry_after(value: str | None) -> int | None:
    """An integer Retry-After in seconds; HTTP dates and junk are ignored (None)."""
    text = (value or "").strip()
    if not (text.isascii() and text.isdigit()):
        return None
    return int(text)


def decide(
    policy: RetryPolicy,
    *,
    endpoint: str,
    attempt: int,
    waited: float,
    status: int | None = None,
    failure: str | None = None,
    retry_after: str | None = None,
    jitter: float | None = None,
) -> Decision:
    """Whether send number `attempt` (1-based) that got `status` (or `failure`: connect|timeout) is retried."""
    if attempt >= policy.attempts:
        return NO_RETRY
    if status in SAFE_STATUSES or failure == "connect":
        reason = REASONS.get(status or 0, "connect_failed")
    elif (status in UNSAFE_STATUSES or failure == "timeout") and endpoint in policy.idempotent:
        reason = REASONS.get(status or 0, "timeout")
    else:
        return NO_RETRY
    server_wait = parse_retry_after(retry_after)
    factor = random.uniform(0.5, 1.0) if jitter is None else jitter
    delay = float(server_wait) if server_wait is not None else backoff(attempt, factor)
    if waited + delay > policy.budget:
        return NO_RETRY
    return Decision(True, delay, reason)


class RetryBudget:
    """Retries shared by all requests (rule 5). Clock-injected; `record_request` for each new request,
    `try_retry` before each retry (it counts the retry when it allows it).

    The window is kept as `SLOTS` slots of `window / SLOTS` seconds, so memory is constant.
    """

    SLOTS = 10

    def __init__(
        self,
        *,
        ratio: float = 0.2,
        min_per_second: float = 5.0,
        window: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ratio = ratio
        self.min_per_second = min_per_second
        self.window = window
        self._slot_seconds = window / self.SLOTS
        self._clock = clock
        self._slots: deque[list[int]] = deque()  # [slot number, requests, retries], oldest first
        self._slot_ends = -math.inf  # clock() at which the newest slot ends: until then it is the current one

    def __repr__(self) -> str:
        requests, retries = self._totals()
        return f"RetryBudget(requests={requests}, retries={retries}, allowed={self._allowed(requests):.1f})"

    def _current(self) -> list[int]:
        number = math.floor(self._clock() / self._slot_seconds)
        while self._slots and self._slots[0][0] <= number - self.SLOTS:
            self._slots.popleft()
        if not self._slots or self._slots[-1][0] != number:
            self._slots.append([number, 0, 0])
        self._slot_ends = (number + 1) * self._slot_seconds
        return self._slots[-1]

    def _totals(self) -> tuple[int, int]:
        self._current()
        return sum(slot[1] for slot in self._slots), sum(slot[2] for slot in self._slots)

    def _allowed(self, requests: int) -> float:
        return self.ratio * requests + self.min_per_second * self.window

    def record_request(self) -> None:
        """One new request (on every request's path: the current slot is found without rounding)."""
        if self._clock() < self._slot_ends:
            self._slots[-1][1] += 1
        else:
            self._current()[1] += 1

    def try_retry(self) -> bool:
        requests, retries = self._totals()
        if retries + 1 > self._allowed(requests):
            return False
        self._slots[-1][2] += 1
        return True


@dataclass
class Outcome:
    """What the sidecar did for one request: filled in by the forwarder, read by the fronts (rule 6)."""

    sent: bool = False  # handed to an upstream connection at least once
    retried: bool = False  # sent again under the retry policy (429/503/connect failure/idempotent 5xx)
    budget_spent: bool = False  # a retry the policy allowed was refused by the shared budget
    idempotent: bool = False  # the endpoint is configured idempotent: running it twice is harmless


_NOTHING_RAN = (ConnectFailed, BadMetadata)


def may_have_run(status: int, outcome: Outcome, error: SidecarError | None = None) -> bool:
    """Whether the model may have run for an answer of `status` (or a sidecar `error`) and running it again
    could do harm: an upstream 500/502/504, a timeout or a dropped connection after the request was sent."""
    if outcome.idempotent or not outcome.sent:
        return False
    if error is None:
        return status in UNSAFE_STATUSES
    return isinstance(error, UpstreamTimeout | UpstreamUnreachable) and not isinstance(error, _NOTHING_RAN)


def client_retry_headers(status: int, outcome: Outcome, error: SidecarError | None = None) -> list[tuple[str, str]]:
    """Headers that tell an HTTP client whether to send a request again (rule 6). Pure.

    `x-should-retry: false` (honoured by openai-python and the other clients generated by Stainless) on an
    error answer when the sidecar already retried the request, when its shared retry budget refused a retry
    (a sustained throttle that client retries would only multiply), or when the model may have run. No
    header otherwise: the client's own rules apply, and `Retry-After` (the upstream's, or the sidecar's own
    on its 503 and 429 answers) says when to come back.
    """
    if status < 400:
        return []
    if outcome.retried or outcome.budget_spent or may_have_run(status, outcome, error):
        return [(SHOULD_RETRY_HEADER, "false")]
    return []


SHOULD_RETRY_HEADER = "x-should-retry"
