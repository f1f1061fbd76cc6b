"""The OAuth side of the control plane: OIDC discovery and ``POST /oidc/v1/token``.

Request handling order for the token endpoint (each step can answer an OAuth error):
1. ``token_latency`` sleep, then ``token_outage`` -> 503 ``temporarily_unavailable``.
2. Content-Type must be ``application/x-www-form-urlencoded``; the body must be at most 64 KiB of
   UTF-8 with no repeated parameter -> else 400 ``invalid_request``.
3. ``grants.decide`` picks the grant (or the error); the token is minted with the current TTL knob.
4. The answer (a grant's or an error's) goes out through the ``token_answer_raw`` / ``token_answer_override``
   knobs of its kind (``workspace``, ``data_plane`` or ``error``), for hostile-answer tests.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from proxy.emulator.faults import merge_patch
from proxy.emulator.grants import (
    CLIENT_CREDENTIALS,
    JWT_BEARER,
    TOKEN_EXCHANGE,
    GrantContext,
    OAuthError,
    decide,
)
from proxy.emulator.responses import JSON, json_response
from proxy.emulator.state import EmulatorState

FORM = "application/x-www-form-urlencoded"
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
MAX_FORM_BYTES = 64 * 1024
MAX_FORM_FIELDS = 64


def discovery_document(base: str) -> dict[str, Any]:
    """The workspace OIDC discovery document; ``base`` is the workspace URL."""
    return {
        "issuer": f"{base}/oidc",
        "authorization_endpoint": f"{base}/oidc/v1/authorize",
        "token_endpoint": f"{base}/oidc/v1/token",
        "grant_types_supported": [CLIENT_CREDENTIALS, JWT_BEARER, TOKEN_EXCHANGE],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "subject_types_supported": ["public"],
        "scopes_supported": ["all-apis", "offline_access", "openid", "profile", "email"],
        "code_challenge_methods_supported": ["S256"],
        "id_token_signing_alg_values_supported": ["RS256"],
    }


def parse_form(content_type: str, body: bytes) -> dict[str, str]:
    """Rule 2: a single-valued form, or ``OAuthError`` 400 ``invalid_request``."""
    if content_type != FORM:
        got = content_type or "none"
        raise OAuthError(400, "invalid_request", f"Content-Type must be {FORM}, got {got}")
    if len(body) > MAX_FORM_BYTES:
        raise OAuthError(400, "invalid_request", "Request body is too large")
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
    except (UnicodeDecodeError, ValueError):
        raise OAuthError(400, "invalid_request", "Request body is not a valid form") from None
    form: dict[str, str] = {}
    for key, value in pairs:
        if key in form:
            raise OAuthError(400, "invalid_request", f"Parameter {key} is repeated")
        form[key] = value
    return form


class Oidc:
    """Handlers for discovery and the token endpoint."""

    def __init__(self, state: EmulatorState) -> None:
        self._state = state

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/oidc/.well-known/oauth-authorization-server", self.discovery)
        app.router.add_get("/oidc/.well-known/openid-configuration", self.discovery)
        app.router.add_route("*", "/oidc/v1/token", self.token)

    async def discovery(self, request: web.Request) -> web.Response:
        return json_response(discovery_document(self._state.workspace_url))

    async def token(self, request: web.Request) -> web.Response:
        """``POST /oidc/v1/token``; see the module rules."""
        state = self._state
        try:
            kind, grant_response = await self._grant(request)
        except OAuthError as err:
            state.counters.grant_failed(err.error)
            headers = {"WWW-Authenticate": 'Basic realm="oidc"'} if err.status == 401 else {}
            error = {"error": err.error, "error_description": err.description}
            return self._answer("error", err.status, error, headers)
        return self._answer(kind, 200, grant_response, {})

    def _answer(self, kind: str, status: int, doc: dict[str, Any], headers: dict[str, str]) -> web.Response:
        """Rule 4: the answer as the knobs for ``kind`` have it."""
        faults = self._state.faults
        raw = faults.token_answer_raw.get(kind)
        if raw is not None:
            return web.Response(status=status, text=raw, content_type=JSON, headers={**NO_STORE, **headers})
        patch = faults.token_answer_override.get(kind)
        body = doc if patch is None else merge_patch(doc, patch)
        return json_response(body, status=status, headers={**NO_STORE, **headers})

    async def _grant(self, request: web.Request) -> tuple[str, dict[str, Any]]:
        state = self._state
        if state.faults.token_latency > 0:
            await asyncio.sleep(state.faults.token_latency)
        if state.faults.token_outage:
            raise OAuthError(503, "temporarily_unavailable", "The token endpoint is temporarily unavailable")
        if request.method != "POST":
            raise OAuthError(405, "invalid_request", "The token endpoint only accepts POST")
        body = await _read_capped(request, MAX_FORM_BYTES)
        content_type = request.content_type if "Content-Type" in request.headers else ""
        form = parse_form(content_type, body)
        now = state.clock()
        grant = decide(form, request.headers.get("Authorization"), self._context(now))
        ttl = state.faults.dp_token_ttl if grant.kind == "data_plane" else state.faults.cp_token_ttl
        issued = state.authority.issue(
            subject=grant.subject,
            kind=grant.kind,
            scope=grant.scope,
            ttl=ttl,
            now=now,
            authorization_details=grant.authorization_details,
        )
        state.counters.grant(grant.grant_type, grant.kind)
        response: dict[str, Any] = {
            "access_token": issued.access_token,
            "token_type": "Bearer",
            "expires_in": issued.expires_in,
            "scope": issued.scope,
        }
        if grant.authorization_details:
            response["authorization_details"] = list(grant.authorization_details)
        return grant.kind, response

    def _context(self, now: float) -> GrantContext:
        state = self._state
        return GrantContext(
            clients=state.settings.clients,
            default_client_id=state.settings.default_client_id,
            registry=state.registry,
            authority=state.authority,
            workload=state.workload,
            federation=state.settings.federation,
            token_endpoint=state.token_endpoint,
            now=now,
        )


async def _read_capped(request: web.BaseRequest, limit: int) -> bytes:
    """Read at most ``limit + 1`` bytes of the body (enough to know it is too large)."""
    if request.content_length is not None and request.content_length > limit:
        raise OAuthError(400, "invalid_request", "Request body is too large")
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = await request.content.read(min(65536, limit + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)
