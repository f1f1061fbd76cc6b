"""Retry decisions for one invocation. Pure: the forwarder does the waiting and the sending.

Rules (no duplicate inference by default):
1. 429 and 503 mean the model did not run: retry, waiting an integer `Retry-After` when the upstream gives
   one, else capped exponential backoff with jitter; at most `attempts` sends and `budget` seconds of
   waiting in all. A wait that would overrun the budget is not taken: the upstream's own answer goes back.
2. A failed connect sent nothing: retried like a 503.
3. 500, 502, 504 and timeouts may mean the model ran: retried only for endpoints configured idempotent.
4. Everything else (and anything after response bytes went downstream) is never retried here.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

BACKOFF_START = 0.2
BACKOFF_CAP = 2.0
SAFE_STATUSES = frozenset({429, 503})
UNSAFE_STATUSES = frozenset({500, 502, 504})
REASONS = {429: "throttled", 503: "unavailable", 500: "server_error", 502: "server_error", 504: "timeout"}


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 3  # sends in all, the first included
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
