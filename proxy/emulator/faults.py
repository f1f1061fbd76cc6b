"""Fault knobs: one mutable object that the Python API and ``/_emulator/faults`` both edit.

Rules:
1. Knobs are read at the moment they matter (a TTL when a token is minted, latency when an
   invocation is answered, connection knobs on every request / sweep), so edits apply at once.
2. ``apply_patch`` is a JSON merge patch (RFC 7386): absent keys stay, ``null`` resets an optional
   knob (or removes one ``latency`` entry), ``latency`` merges per endpoint. A bad patch changes nothing.
3. Planned failures are consumed first-in first-out; a failure bound to one endpoint is skipped by
   invocations of other endpoints.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

FAILURE_STATUSES = (429, 500, 502, 503, 504)
TOKEN_ANSWER_KINDS = ("workspace", "data_plane", "error")

_Setter = Callable[["Faults", object], None]


class FaultsError(ValueError):
    """A knob value or patch is invalid; nothing was changed."""


@dataclass
class PlannedFailure:
    """The next ``remaining`` invocations (of ``endpoint``, or of any endpoint) answer ``status``."""

    remaining: int
    status: int
    retry_after: int | None = None
    endpoint: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "remaining": self.remaining,
            "status": self.status,
            "retry_after": self.retry_after,
            "endpoint": self.endpoint,
        }


@dataclass
class Faults:
    """Run-time knobs.

    latency: seconds added before answering, per endpoint name (overrides ``EndpointSpec.latency``).
    cp_token_ttl / dp_token_ttl: lifetime in seconds of newly minted workspace / data-plane tokens.
    token_latency: seconds the token endpoint waits before answering.
    token_outage: the token endpoint answers 503 ``temporarily_unavailable``.
    idle_close_after: close keep-alive connections idle for longer than this many seconds.
    close_after_requests: a request arriving on a connection that already served this many
        requests makes the server drop the connection without answering.
    connection_faults_on_control_plane: apply the two connection knobs to the control-plane
        listener too (admin routes are always exempt); by default only data-plane listeners.
    metadata_overrides: per endpoint name, a JSON merge patch (RFC 7386) applied to the endpoint's
        metadata answer (``GET /api/2.0/serving-endpoints/{name}``): hostile or unusual metadata for tests
        (an ``http://`` endpoint_url, no authorization_details, a malformed field) or a data-plane URL
        that points at another server (a benchmark's upstream). Replaced whole by a patch; null clears.
    token_answer_override: per answer kind (``workspace`` and ``data_plane`` token grants, ``error`` for
        OAuth error answers), a JSON merge patch applied to the token endpoint's JSON answer: hostile token
        answers for tests (an object as ``access_token``, a negative, tiny, huge or NaN ``expires_in``, a
        5 MB ``error_description``). Replaced whole by a patch; null clears.
    token_answer_raw: per answer kind, the exact body text answered instead (status and headers kept),
        for what a merge patch cannot say: a member that is ``null`` (a merge patch's null removes it), a
        body that is not JSON. Replaced whole by a patch; null clears.
    metadata_failures: per endpoint name (known or not), an HTTP status (429 or 5xx) that metadata reads
        of that name answer instead, Databricks-shaped (429 with ``Retry-After: 1``). Replaced whole by a
        patch; null clears.
    answer_bytes: per endpoint name, answer every invocation with this many filler bytes, streamed
        (chunked, 64 KiB writes that wait while the caller's transport is full), in place of the model's
        answer: a large answer for backpressure and slow-reader tests. Merges per endpoint like
        ``latency``; null removes one entry (or, for the whole knob, all).
    planned_failures: queue filled by ``fail_next`` (read-only through the patch route).
    """

    latency: dict[str, float] = field(default_factory=dict)
    cp_token_ttl: float = 3600.0
    dp_token_ttl: float = 3600.0
    token_latency: float = 0.0
    token_outage: bool = False
    idle_close_after: float | None = None
    close_after_requests: int | None = None
    connection_faults_on_control_plane: bool = False
    metadata_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    token_answer_override: dict[str, Any] = field(default_factory=dict)
    token_answer_raw: dict[str, str] = field(default_factory=dict)
    metadata_failures: dict[str, int] = field(default_factory=dict)
    answer_bytes: dict[str, int] = field(default_factory=dict)
    planned_failures: list[PlannedFailure] = field(default_factory=list)

    def latency_for(self, name: str, default: float) -> float:
        """Seconds to wait before answering an invocation of ``name``."""
        return self.latency.get(name, default)

    def fail_next(
        self, count: int, status: int, *, retry_after: int | None = None, endpoint: str | None = None
    ) -> None:
        """Queue ``count`` failures with ``status`` (429, 500, 502, 503 or 504)."""
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise FaultsError(f"count must be a positive integer, got {count!r}")
        if status not in FAILURE_STATUSES:
            raise FaultsError(f"status must be one of {FAILURE_STATUSES}, got {status!r}")
        if retry_after is not None and (
            isinstance(retry_after, bool) or not isinstance(retry_after, int) or retry_after < 0
        ):
            raise FaultsError(f"retry_after must be a non-negative integer, got {retry_after!r}")
        self.planned_failures.append(PlannedFailure(count, status, retry_after, endpoint))

    def take_failure(self, endpoint: str) -> PlannedFailure | None:
        """Consume one planned failure that applies to ``endpoint``; None when there is none."""
        for planned in self.planned_failures:
            if planned.endpoint in (None, endpoint):
                planned.remaining -= 1
                if planned.remaining <= 0:
                    self.planned_failures.remove(planned)
                return PlannedFailure(1, planned.status, planned.retry_after, planned.endpoint)
        return None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able view of every knob."""
        return {
            "latency": dict(self.latency),
            "cp_token_ttl": self.cp_token_ttl,
            "dp_token_ttl": self.dp_token_ttl,
            "token_latency": self.token_latency,
            "token_outage": self.token_outage,
            "idle_close_after": self.idle_close_after,
            "close_after_requests": self.close_after_requests,
            "connection_faults_on_control_plane": self.connection_faults_on_control_plane,
            "metadata_overrides": copy.deepcopy(self.metadata_overrides),
            "token_answer_override": copy.deepcopy(self.token_answer_override),
            "token_answer_raw": dict(self.token_answer_raw),
            "metadata_failures": dict(self.metadata_failures),
            "answer_bytes": dict(self.answer_bytes),
            "planned_failures": [p.as_dict() for p in self.planned_failures],
        }


def apply_patch(faults: Faults, patch: Mapping[str, object]) -> None:
    """Merge ``patch`` into ``faults`` (rule 2); raise ``FaultsError`` and change nothing if invalid."""
    staged = copy.deepcopy(faults)
    for key, value in patch.items():
        setter = _SETTERS.get(key)
        if setter is None:
            raise FaultsError(f"unknown knob {key!r}; knobs: {', '.join(sorted(_SETTERS))}")
        setter(staged, value)
    for key in _SETTERS:
        setattr(faults, key, getattr(staged, key))


def _seconds(key: str, value: object, *, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        expected = "null or " if optional else ""
        raise FaultsError(f"{key} must be {expected}a number of seconds >= 0, got {value!r}")
    return float(value)


def _set_latency(faults: Faults, value: object) -> None:
    if value is None:
        faults.latency = {}
        return
    if not isinstance(value, Mapping):
        raise FaultsError(f"latency must be an object of endpoint name -> seconds, got {value!r}")
    for name, seconds in value.items():
        if not isinstance(name, str):
            raise FaultsError(f"latency keys must be endpoint names, got {name!r}")
        if seconds is None:
            faults.latency.pop(name, None)
        else:
            faults.latency[name] = _seconds(f"latency.{name}", seconds) or 0.0


def _set_float(key: str) -> _Setter:
    def setter(faults: Faults, value: object) -> None:
        setattr(faults, key, _seconds(key, value))

    return setter


def _set_optional_float(key: str) -> _Setter:
    def setter(faults: Faults, value: object) -> None:
        setattr(faults, key, _seconds(key, value, optional=True))

    return setter


def _set_bool(key: str) -> _Setter:
    def setter(faults: Faults, value: object) -> None:
        if not isinstance(value, bool):
            raise FaultsError(f"{key} must be true or false, got {value!r}")
        setattr(faults, key, value)

    return setter


def _set_close_after_requests(faults: Faults, value: object) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise FaultsError(f"close_after_requests must be null or an integer >= 1, got {value!r}")
    faults.close_after_requests = value


def _set_metadata_overrides(faults: Faults, value: object) -> None:
    if value is None:
        faults.metadata_overrides = {}
        return
    if not isinstance(value, Mapping) or not all(
        isinstance(name, str) and isinstance(patch, Mapping) for name, patch in value.items()
    ):
        raise FaultsError(f"metadata_overrides must be an object of endpoint name -> merge patch, got {value!r}")
    faults.metadata_overrides = {name: copy.deepcopy(dict(patch)) for name, patch in value.items()}


def _token_answers(key: str, value: object, *, text: bool) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(kind in TOKEN_ANSWER_KINDS for kind in value):
        raise FaultsError(f"{key} must be an object keyed by {', '.join(TOKEN_ANSWER_KINDS)}, got {value!r:.200}")
    if text and not all(isinstance(body, str) for body in value.values()):
        raise FaultsError(f"{key} values must be the body text to answer")
    return {kind: copy.deepcopy(patch) for kind, patch in value.items() if patch is not None}


def _set_token_answer_override(faults: Faults, value: object) -> None:
    faults.token_answer_override = _token_answers("token_answer_override", value, text=False)


def _set_token_answer_raw(faults: Faults, value: object) -> None:
    faults.token_answer_raw = _token_answers("token_answer_raw", value, text=True)


def _set_metadata_failures(faults: Faults, value: object) -> None:
    if value is None:
        faults.metadata_failures = {}
        return
    if not isinstance(value, Mapping) or not all(
        isinstance(name, str) and status in FAILURE_STATUSES for name, status in value.items()
    ):
        raise FaultsError(
            f"metadata_failures must be an object of endpoint name -> one of {FAILURE_STATUSES}, got {value!r}"
        )
    faults.metadata_failures = dict(value)


def _set_answer_bytes(faults: Faults, value: object) -> None:
    if value is None:
        faults.answer_bytes = {}
        return
    if not isinstance(value, Mapping):
        raise FaultsError(f"answer_bytes must be an object of endpoint name -> byte count, got {value!r}")
    for name, size in value.items():
        if not isinstance(name, str):
            raise FaultsError(f"answer_bytes keys must be endpoint names, got {name!r}")
        if size is None:
            faults.answer_bytes.pop(name, None)
        elif isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise FaultsError(f"answer_bytes.{name} must be an integer >= 0, got {size!r}")
        else:
            faults.answer_bytes[name] = size


def merge_patch(target: object, patch: object) -> object:
    """RFC 7386 JSON merge patch: objects merge member by member, null removes, anything else replaces."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    merged = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


def _set_planned_failures(faults: Faults, value: object) -> None:
    if value not in (None, []):
        raise FaultsError("planned_failures can only be cleared (null or []); use /_emulator/fail-next")
    faults.planned_failures = []


_SETTERS: dict[str, _Setter] = {
    "latency": _set_latency,
    "cp_token_ttl": _set_float("cp_token_ttl"),
    "dp_token_ttl": _set_float("dp_token_ttl"),
    "token_latency": _set_float("token_latency"),
    "token_outage": _set_bool("token_outage"),
    "idle_close_after": _set_optional_float("idle_close_after"),
    "close_after_requests": _set_close_after_requests,
    "connection_faults_on_control_plane": _set_bool("connection_faults_on_control_plane"),
    "metadata_overrides": _set_metadata_overrides,
    "token_answer_override": _set_token_answer_override,
    "token_answer_raw": _set_token_answer_raw,
    "metadata_failures": _set_metadata_failures,
    "answer_bytes": _set_answer_bytes,
    "planned_failures": _set_planned_failures,
}
