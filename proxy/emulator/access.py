"""Who may call what: pure checks of a presented ``Authorization`` header, ``now`` passed in.

Rules:
1. Control-plane APIs take a live workspace token; anything else is 401 ``UNAUTHENTICATED``.
2. The data plane takes a data-plane token whose ``authorization_details`` grant a query action on
   this incarnation's endpoint id:
   - no / malformed / unknown / revoked / expired token: 401;
   - a token with 30 s or less left: 401 "Token is expiring within 30 seconds. (token expired)";
   - a workspace token (no details): 401 "Missing authorization details";
   - details for another endpoint (or a recreated one): 403 ``PERMISSION_DENIED``.
3. A plain (not route-optimized) endpoint on the workspace host takes a workspace token of a client
   with CAN_QUERY, or a data-plane token scoped to it; 403 otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.emulator.endpoints import Incarnation
from proxy.emulator.grants import ENDPOINT_ACTIONS
from proxy.emulator.tokens import EXPIRY_MARGIN, TokenAuthority, TokenClaims, TokenRejection

EXPIRING_MESSAGE = "Token is expiring within 30 seconds. (token expired)"
MISSING_DETAILS_MESSAGE = "Missing authorization details"


@dataclass(frozen=True)
class Denial:
    """A refusal in the Databricks error shape."""

    status: int
    error_code: str
    message: str


def _unauthenticated(message: str) -> Denial:
    return Denial(401, "UNAUTHENTICATED", message)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _verified(authorization: str | None, authority: TokenAuthority, now: float) -> TokenClaims | Denial:
    token = bearer_token(authorization)
    if token is None:
        return _unauthenticated("Missing credentials: expected an Authorization header with a Bearer token")
    claims = authority.verify(token, now=now)
    if isinstance(claims, TokenRejection):
        return _unauthenticated(f"Invalid access token. ({claims.reason})")
    return claims


def check_workspace(authorization: str | None, authority: TokenAuthority, *, now: float) -> TokenClaims | Denial:
    """Rule 1."""
    claims = _verified(authorization, authority, now)
    if isinstance(claims, Denial):
        return claims
    if claims.kind != "workspace":
        return _unauthenticated("Invalid access token. (a data-plane token cannot call workspace APIs)")
    return claims


def check_data_plane(
    authorization: str | None, incarnation: Incarnation, authority: TokenAuthority, *, now: float
) -> TokenClaims | Denial:
    """Rule 2."""
    claims = _verified(authorization, authority, now)
    if isinstance(claims, Denial):
        return claims
    if claims.seconds_left(now) <= EXPIRY_MARGIN:
        return _unauthenticated(EXPIRING_MESSAGE)
    if claims.kind != "data_plane":
        return _unauthenticated(MISSING_DETAILS_MESSAGE)
    if not grants_query(claims, incarnation):
        return Denial(
            403,
            "PERMISSION_DENIED",
            f"The token's authorization details do not grant query access to serving endpoint "
            f"'{incarnation.name}' ({incarnation.object_path})",
        )
    return claims


def check_plain(
    authorization: str | None, incarnation: Incarnation, authority: TokenAuthority, *, now: float
) -> TokenClaims | Denial:
    """Rule 3."""
    claims = _verified(authorization, authority, now)
    if isinstance(claims, Denial):
        return claims
    allowed = (
        incarnation.spec.may_query(claims.subject) if claims.kind == "workspace" else grants_query(claims, incarnation)
    )
    if not allowed:
        return Denial(
            403,
            "PERMISSION_DENIED",
            f"User does not have permission to query serving endpoint '{incarnation.name}'",
        )
    return claims


def grants_query(claims: TokenClaims, incarnation: Incarnation) -> bool:
    """True when one authorization detail grants a query action on this incarnation's id."""
    for item in claims.authorization_details:
        actions = item.get("actions")
        if (
            item.get("object_path") == incarnation.object_path
            and isinstance(actions, list)
            and any(a in ENDPOINT_ACTIONS for a in actions)
        ):
            return True
    return False
