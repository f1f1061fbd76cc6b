"""When to refresh a token. Pure functions of `now` and the token's times.

Invariants:
1. A token is *usable* while `now < expires_at - UNUSABLE_MARGIN`; Databricks rejects tokens with <= 30 s
   left, and we keep 10 s more for the request to arrive.
2. A background refresh starts at `expires_at - lead`, where
   `lead = max(min(ttl / 2, 20 min), UNUSABLE_MARGIN + REFRESH_ALLOWANCE)`: with long tokens half the
   lifetime decides, with short ones the unusable margin plus the time a refresh may take, so a request
   never finds the token unusable while the refresh runs. It never starts sooner than
   MIN_REFRESH_INTERVAL after the token was obtained: a server handing out very short tokens is not
   asked again in a loop.
3. After a failed refresh the next try waits `backoff(failures)`: exponential from 1 s, capped at 60 s.
   Configuration errors (`invalid_client`...) start at 5 s and are capped at 30 s, jitter included: no hot
   loop against the token server, yet a principal an admin fixes is picked up within 30 s (at once when the
   secret file changes or on SIGHUP). Never past the point where the current token stops being usable
   unless it already has.
"""

from __future__ import annotations

import random

UNUSABLE_MARGIN = 40.0
REFRESH_ALLOWANCE = 15.0
MAX_LEAD = 20 * 60.0
MIN_REFRESH_INTERVAL = 5.0  # even tokens too short-lived to follow the rules are not re-fetched in a loop
BACKOFF_START = 1.0
BACKOFF_CAP = 60.0
CONFIG_ERROR_BACKOFF_START = 5.0
CONFIG_ERROR_BACKOFF_CAP = 30.0


def lead(ttl: float) -> float:
    """Seconds before expiry at which the background refresh starts."""
    return max(min(ttl / 2, MAX_LEAD), UNUSABLE_MARGIN + REFRESH_ALLOWANCE)


def refresh_at(obtained_at: float, expires_at: float) -> float:
    """The moment the background refresh of a token obtained at `obtained_at` should start."""
    return max(obtained_at + MIN_REFRESH_INTERVAL, expires_at - lead(expires_at - obtained_at))


def is_usable(now: float, expires_at: float) -> bool:
    return now < expires_at - UNUSABLE_MARGIN


def backoff(failures: int, *, configuration_error: bool = False, jitter: float | None = None) -> float:
    """Seconds to wait after `failures` consecutive failed fetches (failures >= 1), with +-10% jitter, capped."""
    start, cap = (
        (CONFIG_ERROR_BACKOFF_START, CONFIG_ERROR_BACKOFF_CAP) if configuration_error else (BACKOFF_START, BACKOFF_CAP)
    )
    exponential = start * 2.0 ** min(max(0, failures - 1), 32)
    factor = random.uniform(0.9, 1.1) if jitter is None else jitter
    return min(cap, exponential * factor)
