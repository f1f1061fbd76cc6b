"""Logging: text or JSON lines on stderr, a request id on every line about a request, secrets redacted.

Rules:
1. The request id is bound once per request (`bound_request_id`) in a contextvar; a filter on the
   handler copies it onto every record, whichever logger (ours, aiohttp, authlib) made the record.
2. Redaction is defense in depth, applied to the final formatted line: `Bearer <token>`, JWT-shaped
   strings, `secret=`/`token=`-style key/value pairs and registered secret values become `[REDACTED]`.
   Code must still never log a token; this catches the mistakes.
3. An incoming `X-Request-Id` is honoured when it is short and of a safe charset (it goes into logs and
   upstream headers); otherwise a fresh id is generated. The id is returned to the caller.
4. The access log is off by default (one line per request costs throughput); its records are frozen
   details handed to `log_access`.
5. Text from another server (a token server's error_description, a workspace error message) is
   `untrusted_text` before it reaches a log, `/readyz` or a response: redacted, one line, at most a few
   hundred characters, whatever size and content it came with.
6. In a worker process (`--workers N`) every line carries `worker=<n>` (1..N), so lines of the processes
   sharing stderr can be told apart (and an access-log line says which worker served the request).

Only the standard library is used: the formatting needs are small, and a second logging system next
to aiohttp's and authlib's stdlib loggers would need bridging anyway.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TextIO

MAX_REQUEST_ID = 128
REDACTED = "[REDACTED]"
UNTRUSTED_TEXT_LIMIT = 300  # characters of a remote server's error text that are kept
ACCESS_LOGGER = "serving_sidecar.access"

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("serving_sidecar_request_id", default=None)
_SAFE_REQUEST_ID = re.compile(rf"[A-Za-z0-9._:/+=-]{{1,{MAX_REQUEST_ID}}}")
_TOKEN_PATTERNS = (
    # Authorization header values, whatever the token looks like.
    re.compile(r"(?<![\w-])((?i:bearer|basic))\s+[A-Za-z0-9._~+/=-]{8,}"),
    # JWTs (Databricks OAuth tokens, assertions, projected service-account tokens): base64url JSON header.
    re.compile(r"eyJ[A-Za-z0-9_-]{8,}(\.[A-Za-z0-9_-]*){0,2}"),
    # Form fields (`key=value`) and JSON members (`"key": "value"`, possibly escaped) that carry credentials.
    re.compile(
        r"(?i)\b((?:access_|refresh_|id_|subject_)?token|client_secret|secret|password|assertion)"
        r"""(=|\\?["']\s*:\s*\\?["'])[^\s"'&,}\\]+"""
    ),
)
# Record attributes every LogRecord has; anything else came in through `extra=` and is printed.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "request_id"}


def request_id() -> str | None:
    """The id of the request being served in this context, if any."""
    return _request_id.get()


def request_id_from(header: str | None) -> str:
    """The caller's `X-Request-Id` when safe to log and forward (<= 128 chars of [A-Za-z0-9._:/+=-]), else a new one."""
    if header is not None and _SAFE_REQUEST_ID.fullmatch(header):
        return header
    return new_request_id()


_id_prefix = os.urandom(8).hex()
_id_counter = itertools.count(1)


def new_request_id() -> str:
    """A fresh 32-hex-digit id: a random per-process prefix and a counter (no syscall per request)."""
    return f"{_id_prefix}{next(_id_counter):016x}"


def reseed_request_ids() -> None:
    """A new random prefix: call in a forked worker so its ids do not repeat its parent's."""
    global _id_prefix, _id_counter
    _id_prefix, _id_counter = os.urandom(8).hex(), itertools.count(1)


@contextlib.contextmanager
def bound_request_id(value: str) -> Iterator[str]:
    """Bind `value` as the request id for the code run inside the block (and tasks it creates)."""
    reset = _request_id.set(value)
    try:
        yield value
    finally:
        _request_id.reset(reset)


def context_for(value: str) -> contextvars.Context:
    """A copy of the current context with `value` bound as the request id (for a task serving the request)."""
    context = contextvars.copy_context()
    context.run(_request_id.set, value)
    return context


class Redactor:
    """Replaces credential-looking substrings and registered secret values with `[REDACTED]`."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        self._secrets: list[str] = []
        self.add(secrets)

    def __repr__(self) -> str:
        return f"Redactor(secrets={len(self._secrets)})"

    def add(self, secrets: Iterable[str | None]) -> None:
        """Redact these values too (e.g. a rotated client secret)."""
        # Short values would redact ordinary words; a real client secret is long.
        known = {*self._secrets, *(s for s in secrets if s and len(s) >= 8)}
        self._secrets = sorted(known, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        text = _TOKEN_PATTERNS[0].sub(lambda m: f"{m[1]} {REDACTED}", text)
        text = _TOKEN_PATTERNS[1].sub(REDACTED, text)
        return _TOKEN_PATTERNS[2].sub(lambda m: f"{m[1]}{m[2]}{REDACTED}", text)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def untrusted_text(text: str, *, limit: int = UNTRUSTED_TEXT_LIMIT, redact: Redactor | None = None) -> str:
    """A remote server's text made safe to show (rule 5): redacted, control characters as spaces, cut to `limit`.

    Redaction runs on twice the kept length, so a credential that straddles the cut is still recognised
    by its start, and a multi-megabyte text costs no more than a short one.
    """
    window = text[: 2 * limit]
    cleaned = _CONTROL.sub(" ", (redact or _DEFAULT_REDACTOR)(window)).strip()
    if len(cleaned) <= limit and len(text) <= 2 * limit:
        return cleaned
    return cleaned[:limit].rstrip() + f"... ({len(text)} characters, cut)"


_DEFAULT_REDACTOR = Redactor()


class RequestIdFilter(logging.Filter):
    """Puts the bound request id (or None) on every record as `request_id`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:  # the access log passes its own
            record.request_id = _request_id.get()
        return True


class WorkerFilter(logging.Filter):
    """Puts `worker` (the worker's number) on every record of a worker process (rule 6)."""

    def __init__(self, worker: int) -> None:
        super().__init__()
        self.worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.worker
        return True


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {key: value for key, value in vars(record).items() if key not in _STANDARD and not key.startswith("_")}


class TextFormatter(logging.Formatter):
    """`2025-01-01T10:00:00.123Z INFO serving_sidecar message key=value request_id=...`, redacted."""

    def __init__(self, redact: Redactor) -> None:
        super().__init__()
        self._redact = self.redactor = redact

    def format(self, record: logging.LogRecord) -> str:
        parts = [_timestamp(record.created), record.levelname, record.name, record.getMessage()]
        fields = _extras(record)
        rid = getattr(record, "request_id", None)
        if rid is not None:
            fields["request_id"] = rid
        parts.extend(f"{key}={_text_value(value)}" for key, value in fields.items())
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return self._redact(line)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, extras, exception; redacted."""

    def __init__(self, redact: Redactor) -> None:
        super().__init__()
        self._redact = self.redactor = redact

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": self._redact(record.getMessage()),
        }
        rid = getattr(record, "request_id", None)
        if rid is not None:
            doc["request_id"] = rid
        doc.update({key: self._redact(v) if isinstance(v, str) else v for key, v in _extras(record).items()})
        if record.exc_info:
            doc["exception"] = self._redact(self.formatException(record.exc_info))
        # Fields are redacted before encoding (escaping would hide JSON-shaped secrets), the line after.
        return self._redact(json.dumps(doc, default=str, ensure_ascii=False))


def _timestamp(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


def _text_value(value: object) -> str:
    text = str(value)
    return json.dumps(text) if not text or any(c.isspace() or c in '"=' for c in text) else text


HANDLER_NAME = "serving_sidecar"


def build_handler(
    fmt: str, *, secrets: Iterable[str | None] = (), stream: TextIO | None = None, worker: int | None = None
) -> logging.Handler:
    """A stderr handler with the request-id filter and a redacting `fmt` ("text" or "json") formatter."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    redact = Redactor(secrets)
    handler.setFormatter(JsonFormatter(redact) if fmt == "json" else TextFormatter(redact))
    handler.addFilter(RequestIdFilter())
    if worker is not None:
        handler.addFilter(WorkerFilter(worker))
    handler.set_name(HANDLER_NAME)
    return handler


def add_secrets(secrets: Iterable[str | None]) -> None:
    """Register more secret values with the installed sidecar handler's redaction (a rotated secret)."""
    for handler in logging.getLogger().handlers:
        formatter = handler.formatter
        if handler.get_name() == HANDLER_NAME and isinstance(formatter, TextFormatter | JsonFormatter):
            formatter.redactor.add(secrets)


def configure(
    *,
    fmt: str = "text",
    level: str = "info",
    secrets: Iterable[str | None] = (),
    stream: TextIO | None = None,
    worker: int | None = None,
) -> None:
    """Route every logger through one sidecar handler on the root logger (replacing an earlier one of ours)."""
    root = logging.getLogger()
    for old in list(root.handlers):
        if old.get_name() == HANDLER_NAME:
            root.removeHandler(old)
    root.addHandler(build_handler(fmt, secrets=secrets, stream=stream, worker=worker))
    root.setLevel(level.upper())


@dataclass(frozen=True)
class AccessRecord:
    """One answered request, as the access log sees it. Holds no header values and no body."""

    front: str
    method: str
    path: str  # without query string, at most 200 characters
    endpoint: str  # the metric label: a configured or resolved name, or "unresolved"
    status: int | str
    seconds: float
    bytes_sent: int | None = None
    request_id: str | None = None


_access = logging.getLogger(ACCESS_LOGGER)


def log_access(record: AccessRecord) -> None:
    """Write one access-log line (INFO on `serving_sidecar.access`); the request id comes from the context."""
    _access.info(
        "%s %s %s %.1f ms",
        record.method,
        record.path,
        record.status,
        record.seconds * 1000,
        extra={
            "front": record.front,
            "endpoint": record.endpoint,
            "status": record.status,
            "duration_ms": round(record.seconds * 1000, 3),
            "bytes_sent": record.bytes_sent,
            "request_id": record.request_id,
        },
    )


def access_path(raw_path: str) -> str:
    """The path as it goes in the access log: no query string (it may carry anything), bounded length."""
    return raw_path.split("?", 1)[0][:200]
