"""The sidecar's own errors: one tree, each with an HTTP status, a gRPC code name and a Databricks error_code.

Library exceptions (aiohttp, authlib, grpc) are translated into these at the edge where they occur, so
everything above `upstream`, `credentials` and the fronts sees only `SidecarError`.
"""

from __future__ import annotations

import json
from typing import ClassVar

# Upstream HTTP status -> gRPC status code name (grpc.StatusCode member). Pure data: only the gRPC front
# imports grpc and turns the name into a StatusCode.
GRPC_CODE_BY_HTTP_STATUS: dict[int, str] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    413: "RESOURCE_EXHAUSTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def grpc_code_for_status(status: int) -> str:
    """The gRPC code name for an HTTP status; unlisted 4xx are FAILED_PRECONDITION, 5xx UNKNOWN."""
    if status in GRPC_CODE_BY_HTTP_STATUS:
        return GRPC_CODE_BY_HTTP_STATUS[status]
    return "FAILED_PRECONDITION" if 400 <= status < 500 else "UNKNOWN"


class SidecarError(Exception):
    """An error the sidecar answers itself, in the Databricks shape `{"error_code", "message"}`."""

    status: ClassVar[int] = 500
    error_code: ClassVar[str] = "INTERNAL_ERROR"

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status}, {self.error_code}, {self.message!r})"

    @property
    def grpc_code(self) -> str:
        return grpc_code_for_status(self.status)

    def body(self) -> bytes:
        return json.dumps({"error_code": self.error_code, "message": self.message}).encode()

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
        return headers


class InvalidRequest(SidecarError):
    status = 400
    error_code = "BAD_REQUEST"


class MethodNotAllowed(SidecarError):
    status = 405
    error_code = "METHOD_NOT_ALLOWED"


class EndpointNotFound(SidecarError):
    status = 404
    error_code = "RESOURCE_DOES_NOT_EXIST"


class BodyTooLarge(SidecarError):
    status = 413
    error_code = "REQUEST_ENTITY_TOO_LARGE"


class HeadersTooLarge(SidecarError):
    """A request line and headers over the HTTP front's bounds (count or bytes)."""

    status = 431
    error_code = "BAD_REQUEST"


class ResponseTooLarge(SidecarError):
    """An upstream answer (or one streamed event) over a front's message limit: gRPC's 16 MiB."""

    status = 413
    error_code = "RESPONSE_TOO_LARGE"


class UpstreamUnreachable(SidecarError):
    status = 502
    error_code = "BAD_GATEWAY"


class ConnectFailed(UpstreamUnreachable):
    """No connection could be made: nothing was sent, so a retry cannot duplicate inference."""


class BadMetadata(UpstreamUnreachable):
    """The workspace's answer about an endpoint is malformed, or unsafe to act on (a data-plane URL that is
    not https, a route-optimized URL without authorization details, a token that would go to another host):
    refused, and no token is sent anywhere."""


class Overloaded(SidecarError):
    """Too many requests in flight (globally or for one endpoint): shed at once instead of queueing."""

    status = 503
    error_code = "REQUEST_LIMIT_EXCEEDED"

    @property
    def grpc_code(self) -> str:
        return "RESOURCE_EXHAUSTED"


class LookupsThrottled(SidecarError):
    """Too many workspace lookups of names the sidecar does not know: refused at once, with Retry-After, so
    a caller cycling through names cannot turn the sidecar into an amplifier against the workspace API."""

    status = 429
    error_code = "REQUEST_LIMIT_EXCEEDED"


class NoCredential(SidecarError):
    """No usable token: the token server failed or is not reachable. Always carries Retry-After."""

    status = 503
    error_code = "TEMPORARILY_UNAVAILABLE"


class WorkspaceRefused(SidecarError):
    """The workspace API refused a metadata read (401/403 after a fresh token): passed on as it came."""

    def __init__(self, status: int, error_code: str, message: str) -> None:
        super().__init__(message)
        self.status = status  # type: ignore[misc]
        self.error_code = error_code  # type: ignore[misc]


class UpstreamTimeout(SidecarError):
    status = 504
    error_code = "DEADLINE_EXCEEDED"


class ConfigError(Exception):
    """The configuration is unusable. The message names the key and says how to fix it."""


class InjectError(Exception):
    """A manifest or an injection option cannot be used; the message names the object and the field or annotation."""


class TokenError(Exception):
    """A token request failed. `error` is the OAuth error code (or a transport reason); never holds secrets."""

    def __init__(self, error: str, description: str = "", *, status: int | None = None) -> None:
        super().__init__(f"{error}: {description}" if description else error)
        self.error = error
        self.description = description
        self.status = status

    @property
    def is_configuration_error(self) -> bool:
        """True for errors a retry cannot fix soon (wrong client id/secret, missing permission)."""
        return self.error in {"invalid_client", "unauthorized_client", "invalid_authorization_details"}
