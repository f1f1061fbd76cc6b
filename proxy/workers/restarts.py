"""When to restart a worker that exited: soon at first, and at most LIMIT times per WINDOW. Pure (`now` in).

Rules:
1. Every exit the parent did not ask for counts, whatever the exit code or signal, for any worker.
2. With k exits in the last WINDOW seconds, k < LIMIT: restart after BACKOFF_START * 2^(k-1) seconds
   (0.1, 0.2, 0.4, 0.8 s): one crash costs a fraction of a second of one worker.
3. With LIMIT or more the workers are crash-looping: the sidecar reports unready (a crashing worker
   is not serving), and the next restart waits until the oldest of the last LIMIT exits leaves the
   window, so there are never more than LIMIT restarts per WINDOW, whatever the cause: no spinning,
   and a cause that went away (a full disk, a bad node moment) heals by itself.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

LIMIT = 5
WINDOW = 60.0
BACKOFF_START = 0.1


@dataclass
class Restarts:
    limit: int = LIMIT
    window: float = WINDOW
    exits: deque[float] = field(default_factory=deque)

    def __repr__(self) -> str:
        return f"Restarts({len(self.exits)} exits kept, limit {self.limit} per {self.window:g} s)"

    def exited(self, now: float) -> float:
        """Record an exit at `now`; the seconds to wait before starting its replacement (rules 2 and 3)."""
        self.exits.append(now)
        self._forget_before(now - self.window)
        count = len(self.exits)
        if count < self.limit:
            return BACKOFF_START * 2.0 ** (count - 1)
        return max(0.0, self.exits[-self.limit] + self.window - now)

    def crash_looping(self, now: float) -> bool:
        """Rule 3: LIMIT or more exits within the last WINDOW seconds."""
        self._forget_before(now - self.window)
        return len(self.exits) >= self.limit

    def _forget_before(self, moment: float) -> None:
        while self.exits and self.exits[0] < moment:
            self.exits.popleft()
