"""A token bucket: at most `burst` events at once, then `rate` a second. Pure apart from the injected clock.

Used to bound workspace lookups of endpoint names the sidecar has never resolved, so a caller that cycles
through made-up names cannot turn the sidecar into an amplifier against the workspace API.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    def __init__(self, rate: float, burst: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"a token bucket needs rate > 0 and burst >= 1, got rate={rate}, burst={burst}")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._stamp = clock()

    def __repr__(self) -> str:
        return f"TokenBucket(rate={self.rate}/s, burst={self.burst}, tokens={self._refill():.2f})"

    def _refill(self) -> float:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + max(0.0, now - self._stamp) * self.rate)
        self._stamp = now
        return self._tokens

    def take(self) -> bool:
        """Spend one token if there is one (True), else spend nothing (False)."""
        if self._refill() < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def wait(self) -> float:
        """Seconds until the next `take` can succeed (0 when it can now)."""
        return max(0.0, (1.0 - self._refill()) / self.rate)
