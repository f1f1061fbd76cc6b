"""OAuth grant decisions for ``POST /oidc/v1/token``: pure, no I/O, ``now`` passed in.

Rules:
1. ``decide`` returns a ``Grant`` (what to mint) or raises ``OAuthError`` (status, error, description).
2. ``client_credentials`` authenticates with HTTP Basic or ``client_id``/``client_secret`` in the
   form (RFC 6749 2.3.1; Basic values may be form-urlencoded). Failure: 401 ``invalid_client``.
3. ``jwt-bearer`` needs ``assertion`` (a live workspace token minted here) and
   ``authorization_details``; any ``Authorization`` header is ignored.
4. ``token-exchange`` needs a JWT ``subject_token`` from the fake Kubernetes issuer that matches a
   federation policy on issuer, audience and subject (and ``client_id`` when given).
5. ``authorization_details`` must be a non-empty JSON array of ``workspace_permission`` entries on
   current endpoint ids the client may query; otherwise 400 ``invalid_authorization_details``.
   With it a grant mints a data-plane token; without it a workspace token.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from proxy.emulator.counters import GrantType
from proxy.emulator.endpoints import Registry
from proxy.emulator.settings import FederationPolicy
from proxy.emulator.tokens import TokenAuthority, TokenKind, TokenRejection, WorkloadIssuer

CLIENT_CREDENTIALS = "client_credentials"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"
ID_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:id_token"
DEFAULT_SCOPE = "all-apis"
ENDPOINT_ACTIONS = ("query_inference_endpoint", "manage_inference_endpoint")
NOT_AUTHORIZED = "User is not authorized to the requested authorizations"


class OAuthError(Exception):
    """An OAuth error response: ``{"error": error, "error_description": description}``."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(f"{error}: {description}")
        self.status = status
        self.error = error
        self.description = description


@dataclass(frozen=True)
class Grant:
    """What to mint: a token of ``kind`` for ``subject`` with ``scope`` and details."""

    grant_type: GrantType
    subject: str
    kind: TokenKind
    scope: str
    authorization_details: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class GrantContext:
    """Everything a decision reads. ``token_endpoint`` is the default federation audience."""

    clients: Mapping[str, str]
    default_client_id: str
    registry: Registry
    authority: TokenAuthority
    workload: WorkloadIssuer
    federation: Sequence[FederationPolicy]
    token_endpoint: str
    now: float


def decide(form: Mapping[str, str], authorization: str | None, ctx: GrantContext) -> Grant:
    """Rule 1: the decision for one token request with a parsed, single-valued form."""
    grant_type = form.get("grant_type")
    if not grant_type:
        raise OAuthError(400, "invalid_request", "Missing required parameter: grant_type")
    if grant_type == CLIENT_CREDENTIALS:
        return _client_credentials(form, authorization, ctx)
    if grant_type == JWT_BEARER:
        return _jwt_bearer(form, ctx)
    if grant_type == TOKEN_EXCHANGE:
        return _token_exchange(form, ctx)
    raise OAuthError(400, "unsupported_grant_type", f"Unsupported grant_type: {grant_type}")


def _client_credentials(form: Mapping[str, str], authorization: str | None, ctx: GrantContext) -> Grant:
    client_id = authenticate_client(form, authorization, ctx.clients)
    details = _optional_details(form, client_id, ctx)
    return _grant("client_credentials", client_id, form, details)


def _jwt_bearer(form: Mapping[str, str], ctx: GrantContext) -> Grant:
    assertion = _required(form, "assertion")
    raw_details = _required(form, "authorization_details")
    claims = ctx.authority.verify(assertion, now=ctx.now)
    if isinstance(claims, TokenRejection):
        raise OAuthError(400, "invalid_grant", f"Invalid assertion: {claims.reason}")
    if claims.kind != "workspace":
        raise OAuthError(400, "invalid_grant", "Invalid assertion: a data-plane token cannot be exchanged")
    details = authorize_details(parse_details(raw_details), claims.subject, ctx.registry)
    return Grant("jwt_bearer", claims.subject, "data_plane", form.get("scope") or claims.scope, details)


def _token_exchange(form: Mapping[str, str], ctx: GrantContext) -> Grant:
    subject_token = _required(form, "subject_token")
    token_type = _required(form, "subject_token_type")
    if token_type not in (JWT_TOKEN_TYPE, ID_TOKEN_TYPE):
        raise OAuthError(400, "invalid_request", f"Unsupported subject_token_type: {token_type}")
    claims = ctx.workload.verify(subject_token, now=ctx.now)
    if isinstance(claims, TokenRejection):
        raise OAuthError(400, "invalid_grant", claims.reason)
    client_id = match_policy(claims.issuer, claims.audiences, claims.subject, form.get("client_id"), ctx)
    details = _optional_details(form, client_id, ctx)
    return _grant("token_exchange", client_id, form, details)


def _grant(grant_type: GrantType, subject: str, form: Mapping[str, str], details: tuple[dict[str, Any], ...]) -> Grant:
    kind: TokenKind = "data_plane" if details else "workspace"
    return Grant(grant_type, subject, kind, form.get("scope") or DEFAULT_SCOPE, details)


def _required(form: Mapping[str, str], key: str) -> str:
    value = form.get(key)
    if not value:
        raise OAuthError(400, "invalid_request", f"Missing required parameter: {key}")
    return value


def _optional_details(form: Mapping[str, str], client_id: str, ctx: GrantContext) -> tuple[dict[str, Any], ...]:
    raw = form.get("authorization_details")
    if raw is None:
        return ()
    return authorize_details(parse_details(raw), client_id, ctx.registry)


def authenticate_client(form: Mapping[str, str], authorization: str | None, clients: Mapping[str, str]) -> str:
    """Rule 2: the authenticated client id, or 401 ``invalid_client``."""
    form_pair = (form["client_id"], form.get("client_secret", "")) if "client_id" in form else None
    basic = _basic_credentials(authorization)
    if basic is not None and form_pair is not None and form_pair[1]:
        raise OAuthError(400, "invalid_request", "Use one client authentication method, not several")
    candidates = _candidates(basic) if basic is not None else [form_pair] if form_pair else []
    for client_id, secret in candidates:
        expected = clients.get(client_id)
        if expected is not None and secret and hmac.compare_digest(expected.encode(), secret.encode()):
            return client_id
    raise OAuthError(401, "invalid_client", "Client authentication failed")


def _basic_credentials(authorization: str | None) -> tuple[str, str] | None:
    if not authorization or authorization[:6].lower() != "basic ":
        return None
    try:
        decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise OAuthError(401, "invalid_client", "Client authentication failed") from None
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        raise OAuthError(401, "invalid_client", "Client authentication failed")
    return client_id, secret


def _candidates(basic: tuple[str, str]) -> list[tuple[str, str]]:
    raw_id, raw_secret = basic
    return [(raw_id, raw_secret), (unquote(raw_id), unquote(raw_secret))]


def parse_details(raw: str) -> list[dict[str, Any]]:
    """Rule 5, shape part: a non-empty JSON array of objects."""
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        raise OAuthError(400, "invalid_authorization_details", "authorization_details is not valid JSON") from None
    if not isinstance(value, list) or not value or not all(isinstance(item, dict) for item in value):
        raise OAuthError(
            400,
            "invalid_authorization_details",
            "authorization_details must be a non-empty JSON array of objects",
        )
    return value


def authorize_details(details: list[dict[str, Any]], client_id: str, registry: Registry) -> tuple[dict[str, Any], ...]:
    """Rule 5, permission part: each entry names a current endpoint this client may query."""
    for item in details:
        if item.get("type") != "workspace_permission" or item.get("object_type") != "serving-endpoints":
            raise OAuthError(400, "invalid_authorization_details", "Unsupported authorization details type")
        actions = item.get("actions")
        if not isinstance(actions, list) or not actions or not all(a in ENDPOINT_ACTIONS for a in actions):
            raise OAuthError(400, "invalid_authorization_details", f"actions must be a subset of {ENDPOINT_ACTIONS}")
        path = item.get("object_path")
        prefix = "/serving-endpoints/"
        endpoint_id = path[len(prefix) :] if isinstance(path, str) and path.startswith(prefix) else ""
        incarnation = registry.current_by_id(endpoint_id)
        if incarnation is None or not incarnation.spec.may_query(client_id):
            raise OAuthError(400, "invalid_authorization_details", NOT_AUTHORIZED)
    return tuple(details)


def match_policy(
    issuer: str, audiences: tuple[str, ...], subject: str, client_id: str | None, ctx: GrantContext
) -> str:
    """Rule 4: the client id of the first policy matching the token, or 400 ``invalid_grant``."""
    policies = [p for p in ctx.federation if client_id is None or _policy_client(p, ctx) == client_id]
    if not policies:
        raise OAuthError(400, "invalid_grant", f"No federation policy is configured for client '{client_id}'")
    mismatches = [_mismatch(p, issuer, audiences, subject, ctx) for p in policies]
    for policy, mismatch in zip(policies, mismatches, strict=True):
        if mismatch is None:
            return _policy_client(policy, ctx)
    raise OAuthError(400, "invalid_grant", str(mismatches[0]))


def _policy_client(policy: FederationPolicy, ctx: GrantContext) -> str:
    return policy.client_id or ctx.default_client_id


def _mismatch(
    policy: FederationPolicy, issuer: str, audiences: tuple[str, ...], subject: str, ctx: GrantContext
) -> str | None:
    expected_audience = policy.audience or ctx.token_endpoint
    if issuer != policy.issuer:
        return f"Token issuer '{issuer}' does not match the federation policy issuer '{policy.issuer}'"
    if expected_audience not in audiences:
        return f"Token audience {list(audiences)} does not match the federation policy audience '{expected_audience}'"
    if subject != policy.subject:
        return f"Token subject '{subject}' does not match the federation policy subject '{policy.subject}'"
    return None
