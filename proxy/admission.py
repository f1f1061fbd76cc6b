"""Admission: bounds on requests in flight, in all and per endpoint. Beyond them a request is shed at
once (503, gRPC RESOURCE_EXHAUSTED, with Retry-After) rather than queued, so memory stays bounded."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from proxy.errors import Overloaded


class Admission:
    def __init__(self, *, max_total: int, max_per_endpoint: int) -> None:
        self.max_total = max_total
        self.max_per_endpoint = max_per_endpoint
        self.total = 0
        self._per_endpoint: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"Admission(total={self.total}/{self.max_total}, per_endpoint={dict(self._per_endpoint)})"

    def check(self, endpoint: str) -> None:
        """Raise Overloaded if a request for `endpoint` would not be admitted now."""
        self._check(endpoint, self._per_endpoint.get(endpoint, 0))

    def acquire(self, endpoint: str) -> None:
        """Take a slot for `endpoint`, or raise Overloaded; `release` it when the answer is done."""
        held = self._per_endpoint.get(endpoint, 0)
        self._check(endpoint, held)
        self.total += 1
        self._per_endpoint[endpoint] = held + 1

    def release(self, endpoint: str) -> None:
        self.total -= 1
        held = self._per_endpoint[endpoint] - 1
        if held:
            self._per_endpoint[endpoint] = held
        else:
            del self._per_endpoint[endpoint]

    def _check(self, endpoint: str, held: int) -> None:
        if self.total >= self.max_total:
            raise Overloaded(f"{self.total} requests in flight: the sidecar's limit", retry_after=1)
        if held >= self.max_per_endpoint:
            raise Overloaded(f"{held} requests in flight for endpoint '{endpoint}': its limit", retry_after=1)

    @contextlib.contextmanager
    def slot(self, endpoint: str) -> Iterator[None]:
        self.acquire(endpoint)
        try:
            yield
        finally:
            self.release(endpoint)
