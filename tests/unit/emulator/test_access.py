"""Token checks for the data plane, plain endpoints and workspace APIs (pure, explicit clock)."""

from __future__ import annotations

from proxy.emulator.access import (
    EXPIRING_MESSAGE,
    MISSING_DETAILS_MESSAGE,
    Denial,
    bearer_token,
    check_data_plane,
    check_plain,
    check_workspace,
)
from proxy.emulator.endpoints import Registry
from proxy.emulator.settings import EndpointSpec
from proxy.emulator.tokens import TokenAuthority, TokenClaims


def _setup() -> tuple[TokenAuthority, Registry]:
    registry = Registry("1")
    registry.add(EndpointSpec("a", "custom"), port=1, now_ms=0)
    registry.add(EndpointSpec("b", "custom", route_optimized=False, allowed_clients=("x",)), port=None, now_ms=0)
    return TokenAuthority("iss"), registry


def _dp(authority: TokenAuthority, endpoint_id: str, *, ttl: float = 600, sub: str = "sp") -> str:
    details = ({"object_path": f"/serving-endpoints/{endpoint_id}", "actions": ["query_inference_endpoint"]},)
    token = authority.issue(
        subject=sub, kind="data_plane", scope="all-apis", ttl=ttl, now=0, authorization_details=details
    )
    return "Bearer " + token.access_token


def test_bearer_token_parsing() -> None:
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer  abc ") == "abc"
    assert bearer_token("Basic abc") is None
    assert bearer_token("Bearer ") is None
    assert bearer_token(None) is None


def test_data_plane_rules() -> None:
    authority, registry = _setup()
    a = registry.get("a")
    b = registry.get("b")
    assert a is not None and b is not None
    workspace = "Bearer " + authority.issue(subject="sp", kind="workspace", scope="s", ttl=600, now=0).access_token
    assert isinstance(check_data_plane(_dp(authority, a.endpoint_id), a, authority, now=0), TokenClaims)
    assert check_data_plane(workspace, a, authority, now=0) == Denial(401, "UNAUTHENTICATED", MISSING_DETAILS_MESSAGE)
    assert check_data_plane(_dp(authority, a.endpoint_id, ttl=30), a, authority, now=0) == Denial(
        401, "UNAUTHENTICATED", EXPIRING_MESSAGE
    )
    denial = check_data_plane(_dp(authority, b.endpoint_id), a, authority, now=0)
    assert isinstance(denial, Denial) and denial.status == 403
    recreated = registry.add(a.spec, port=2, now_ms=0)
    denial = check_data_plane(_dp(authority, a.endpoint_id), recreated, authority, now=0)
    assert isinstance(denial, Denial) and denial.status == 403


def test_plain_and_workspace_rules() -> None:
    authority, registry = _setup()
    b = registry.get("b")
    assert b is not None
    x = "Bearer " + authority.issue(subject="x", kind="workspace", scope="s", ttl=60, now=0).access_token
    y = "Bearer " + authority.issue(subject="y", kind="workspace", scope="s", ttl=60, now=0).access_token
    assert isinstance(check_plain(x, b, authority, now=0), TokenClaims)
    denial = check_plain(y, b, authority, now=0)
    assert isinstance(denial, Denial) and denial.status == 403
    assert isinstance(check_workspace(x, authority, now=0), TokenClaims)
    denial = check_workspace(_dp(authority, b.endpoint_id), authority, now=0)
    assert isinstance(denial, Denial) and denial.status == 401
    denial = check_workspace(x, authority, now=60)
    assert isinstance(denial, Denial) and "expired" in denial.message
