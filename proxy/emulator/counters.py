"""Counters of what the emulated workspace saw; tests of every part assert on them.

``Counters.snapshot()`` returns this JSON-able shape (also served by ``GET /_emulator/counters``):

- ``token_grants``: successful grants by type, keys ``client_credentials``, ``jwt_bearer``,
  ``token_exchange`` (always present, 0 when none).
- ``token_failures``: failed token requests by OAuth error code, e.g. ``{"invalid_client": 1}``.
- ``tokens_issued``: minted tokens by kind, keys ``workspace`` and ``data_plane``.
- ``metadata_reads``: ``GET /api/2.0/serving-endpoints/{name}`` by requested name (any answer).
- ``metadata_lists``: ``GET /api/2.0/serving-endpoints`` calls.
- ``invocations``: by endpoint name, then HTTP status as a string, e.g.
  ``{"fraud-ro": {"200": 3, "429": 1}}``. Counted when the status is sent (for streams: when the
  stream starts). A dropped connection or a cancelled handler that never answered is not counted here.
- ``invocations_in_flight``: invocation handlers running now.
- ``invocations_cancelled``: invocation handlers cancelled because the client went away.
- ``data_plane_connections`` / ``control_plane_connections``: TCP connections accepted.
- ``dropped_connections``: connections dropped by ``close_after_requests``.
- ``idle_closed_connections``: keep-alive connections closed by ``idle_close_after``.
- ``answer_bytes_sent``: filler bytes of ``answer_bytes`` answers handed to connections so far (each
  write waits while the peer's transport is full, so this bounds what a slow reader was sent).
- ``bearer_tokens``: requests (admin routes aside) that carried ``Authorization: Bearer``, by whether the
  emulator issued that token: ``own`` (expired and revoked ones included) or ``foreign`` (anything else,
  e.g. a caller's API key or a local token that should never have left the sidecar).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

GrantType = Literal["client_credentials", "jwt_bearer", "token_exchange"]
TokenKind = Literal["workspace", "data_plane"]
Plane = Literal["control_plane", "data_plane"]


@dataclass
class Counters:
    """Live counters; mutate through the methods, read through ``snapshot``."""

    token_grants: Counter[str] = field(default_factory=Counter)
    token_failures: Counter[str] = field(default_factory=Counter)
    tokens_issued: Counter[str] = field(default_factory=Counter)
    metadata_reads: Counter[str] = field(default_factory=Counter)
    metadata_lists: int = 0
    invocations: dict[str, Counter[str]] = field(default_factory=dict)
    invocations_in_flight: int = 0
    invocations_cancelled: int = 0
    connections: Counter[str] = field(default_factory=Counter)
    dropped_connections: int = 0
    idle_closed_connections: int = 0
    answer_bytes_sent: int = 0
    bearer_tokens: Counter[str] = field(default_factory=Counter)

    def grant(self, grant: GrantType, kind: TokenKind) -> None:
        self.token_grants[grant] += 1
        self.tokens_issued[kind] += 1

    def grant_failed(self, error: str) -> None:
        self.token_failures[error] += 1

    def metadata_read(self, name: str) -> None:
        self.metadata_reads[name] += 1

    def invocation(self, name: str, status: int) -> None:
        self.invocations.setdefault(name, Counter())[str(status)] += 1

    def bearer_token(self, *, own: bool) -> None:
        self.bearer_tokens["own" if own else "foreign"] += 1

    def connection_accepted(self, plane: Plane) -> None:
        self.connections[plane] += 1

    def reset(self) -> None:
        """Zero everything except ``invocations_in_flight``, which describes the present."""
        in_flight = self.invocations_in_flight
        fresh = Counters()
        for name in fresh.__dataclass_fields__:
            setattr(self, name, getattr(fresh, name))
        self.invocations_in_flight = in_flight

    def snapshot(self) -> dict[str, Any]:
        """A deep, JSON-able copy in the documented shape."""
        return {
            "token_grants": {g: self.token_grants[g] for g in ("client_credentials", "jwt_bearer", "token_exchange")},
            "token_failures": dict(self.token_failures),
            "tokens_issued": {k: self.tokens_issued[k] for k in ("workspace", "data_plane")},
            "metadata_reads": dict(self.metadata_reads),
            "metadata_lists": self.metadata_lists,
            "invocations": {name: dict(statuses) for name, statuses in self.invocations.items()},
            "invocations_in_flight": self.invocations_in_flight,
            "invocations_cancelled": self.invocations_cancelled,
            "data_plane_connections": self.connections["data_plane"],
            "control_plane_connections": self.connections["control_plane"],
            "dropped_connections": self.dropped_connections,
            "idle_closed_connections": self.idle_closed_connections,
            "answer_bytes_sent": self.answer_bytes_sent,
            "bearer_tokens": {kind: self.bearer_tokens[kind] for kind in ("own", "foreign")},
        }
