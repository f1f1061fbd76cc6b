"""Readiness as events: one computation that the admin listener and the gRPC health service both follow.

Rules:
1. `Health` is computed by one function of the sidecar's state and never cached: whoever asks (`/readyz`,
   a gRPC `Check`, a new `Watch`) gets `current()`, and an ask that finds `ready` flipped notifies every
   subscriber first, synchronously. Both fronts therefore say the same thing at every instant.
2. An input that changes without anyone asking calls `current()` itself: a workspace token fetched,
   failed or dropped, listeners up or down, draining. The one input that changes with time alone, the
   workspace token turning unusable, is a timer armed for the moment it will (`usable_until`).
3. Subscribers run only when `ready` flips, in subscription order; one that fails is logged and the
   others still run.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("serving_sidecar")

TIMER_SLACK = 0.001  # seconds after `usable_until` the timer fires, so the token is past it for sure


@dataclass(frozen=True)
class Health:
    started: bool
    listening: bool
    credential_ok: bool
    draining: bool
    credential_error: str | None = None
    descriptors_ok: bool = True  # False for a while after accept() ran out of file descriptors
    workers_problem: str | None = None  # --workers N: why not every HTTP worker serves, e.g. crash-looping

    @property
    def ready(self) -> bool:
        return (
            self.listening
            and self.credential_ok
            and not self.draining
            and self.descriptors_ok
            and self.workers_problem is None
        )

    def reason(self) -> str:
        if self.draining:
            return "draining"
        if not self.descriptors_ok:
            return "out of file descriptors: new connections are refused (raise the open-files limit)"
        if not self.listening:
            return "listeners are not up"
        if self.workers_problem is not None:
            return self.workers_problem
        if not self.credential_ok:
            detail = f": {self.credential_error}" if self.credential_error else ""
            return f"no working workspace credential yet{detail}"
        return "ready"


Subscriber = Callable[[Health], None]


class Readiness:
    def __init__(
        self,
        compute: Callable[[], Health],
        *,
        usable_until: Callable[[], float | None] = lambda: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._compute = compute
        self._usable_until = usable_until
        self._clock = clock
        self._subscribers: list[Subscriber] = []
        self._ready: bool | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._armed_for: float | None = None

    def __repr__(self) -> str:
        return f"Readiness(ready={self._ready}, subscribers={len(self._subscribers)}, timer={self._timer is not None})"

    def subscribe(self, subscriber: Subscriber) -> None:
        """Call `subscriber(health)` whenever readiness flips (rule 3)."""
        self._subscribers.append(subscriber)

    def current(self) -> Health:
        """Readiness now; notifies the subscribers first if it flipped (rule 1)."""
        health = self._compute()
        if health.ready != self._ready:
            self._ready = health.ready
            self._notify(health)
        self._arm(health)
        return health

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._armed_for = None

    def _notify(self, health: Health) -> None:
        for subscriber in list(self._subscribers):
            try:
                subscriber(health)
            except Exception:
                log.exception("a readiness subscriber failed")

    def _arm(self, health: Health) -> None:
        """Rule 2: wake up when the workspace token turns unusable, the one change no event announces."""
        until = self._usable_until() if health.ready else None
        if until is not None and until == self._armed_for:
            return  # already armed for that moment
        self.close()
        if until is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a synchronous caller): nobody is watching, and the next ask computes anew
        self._timer = loop.call_later(max(0.0, until - self._clock()) + TIMER_SLACK, self._expired)
        self._armed_for = until

    def _expired(self) -> None:
        self._timer = self._armed_for = None
        self.current()
