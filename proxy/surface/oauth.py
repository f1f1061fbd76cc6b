"""A local OAuth facade, so SDK code that insists on OAuth (`serving_endpoints_data_plane`) runs unchanged.

Rules:
1. The sidecar answers OIDC discovery and `POST /oidc/v1/token` (client credentials, and the jwt-bearer
   exchange the SDK makes for a data-plane token) for any client id, secret and assertion.
2. The tokens it hands out are random local strings, worth nothing anywhere else: never a Databricks
   token, never stored, never checked, never forwarded (the invocation path drops the caller's
   Authorization header and sets its own). Anyone who can reach the listener may call it without one.
3. Errors are OAuth-shaped (`error`, `error_description`) with a Content-Type, as the SDK requires.
"""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import parse_qsl

from proxy.surface.messages import LocalAnswer, LocalRequest, json_answer

DISCOVERY = frozenset({"/oidc/.well-known/oauth-authorization-server", "/oidc/.well-known/openid-configuration"})
TOKEN = "/oidc/v1/token"
CLIENT_CREDENTIALS = "client_credentials"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
FORM = "application/x-www-form-urlencoded"
TOKEN_TTL = 900  # seconds: short, and minting another costs nothing
TOKEN_PREFIX = "sidecar-local-"
_NO_STORE = (("Cache-Control", "no-store"), ("Pragma", "no-cache"))


def discovery_document(origin: str) -> dict[str, Any]:
    return {
        "issuer": f"{origin}/oidc",
        "authorization_endpoint": f"{origin}/oidc/v1/authorize",
        "token_endpoint": f"{origin}{TOKEN}",
        "grant_types_supported": [CLIENT_CREDENTIALS, JWT_BEARER],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "response_types_supported": ["code"],
        "scopes_supported": ["all-apis"],
    }


def local_token() -> str:
    """A fresh random token (rule 2)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_answer(request: LocalRequest) -> LocalAnswer:
    """`POST /oidc/v1/token`: a local token for a well-formed client-credentials or jwt-bearer request."""
    if request.method != "POST":
        return oauth_error(405, "invalid_request", "the token endpoint takes POST")
    content_type = (request.header("Content-Type") or "").split(";", 1)[0].strip().lower()
    if content_type != FORM:
        return oauth_error(400, "invalid_request", f"Content-Type must be {FORM}")
    try:
        form = dict(parse_qsl(request.body.decode(), keep_blank_values=True, max_num_fields=64))
    except (UnicodeDecodeError, ValueError):
        return oauth_error(400, "invalid_request", "the request body is not a valid form")
    grant = form.get("grant_type", "")
    if grant == JWT_BEARER and not form.get("assertion"):
        return oauth_error(400, "invalid_request", "the jwt-bearer grant needs an assertion")
    if grant not in (CLIENT_CREDENTIALS, JWT_BEARER):
        return oauth_error(400, "unsupported_grant_type", f"the sidecar grants {CLIENT_CREDENTIALS} and {JWT_BEARER}")
    doc = {"access_token": local_token(), "token_type": "Bearer", "expires_in": TOKEN_TTL, "scope": "all-apis"}
    return json_answer(doc, headers=_NO_STORE)


def oauth_error(status: int, error: str, description: str) -> LocalAnswer:
    return json_answer({"error": error, "error_description": description}, status=status, headers=_NO_STORE)
