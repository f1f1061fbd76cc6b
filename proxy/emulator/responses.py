"""Response builders: every answer is JSON with a Content-Type, in one of two error shapes.

- Databricks APIs and the data plane: ``{"error_code": CODE, "message": text}``.
- The OAuth token endpoint: ``{"error": code, "error_description": text}``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web

JSON = "application/json"


def json_response(body: Any, *, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    """A JSON response; ``Content-Type: application/json``."""
    return web.Response(
        status=status,
        body=json.dumps(body, separators=(",", ":")).encode(),
        content_type=JSON,
        headers=dict(headers or {}),
    )


def databricks_error(
    status: int, error_code: str, message: str, *, headers: Mapping[str, str] | None = None
) -> web.Response:
    """The Databricks REST error shape."""
    return json_response({"error_code": error_code, "message": message}, status=status, headers=headers)


def oauth_error(status: int, error: str, description: str, *, headers: Mapping[str, str] | None = None) -> web.Response:
    """The OAuth 2.0 error shape (RFC 6749 5.2), never cached."""
    merged = {"Cache-Control": "no-store", "Pragma": "no-cache", **(headers or {})}
    return json_response({"error": error, "error_description": description}, status=status, headers=merged)


STATUS_CODES: dict[int, str] = {
    400: "BAD_REQUEST",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "ENDPOINT_NOT_FOUND",
    405: "BAD_REQUEST",
    413: "BAD_REQUEST",
    429: "REQUEST_LIMIT_EXCEEDED",
    500: "INTERNAL_ERROR",
    502: "BAD_GATEWAY",
    503: "TEMPORARILY_UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def error_code_for(status: int) -> str:
    """The Databricks ``error_code`` the emulator uses for a bare HTTP status."""
    return STATUS_CODES.get(status, "INTERNAL_ERROR" if status >= 500 else "BAD_REQUEST")
