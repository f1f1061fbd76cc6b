"""OAuth grant decisions (pure, explicit clock)."""

from __future__ import annotations

import json

import pytest

from proxy.emulator.endpoints import Registry
from proxy.emulator.grants import (
    JWT_BEARER,
    TOKEN_EXCHANGE,
    Grant,
    GrantContext,
    OAuthError,
    authenticate_client,
    decide,
)
from proxy.emulator.settings import EndpointSpec, FederationPolicy
from proxy.emulator.tokens import TokenAuthority, WorkloadIssuer


@pytest.fixture(scope="module")
def workload() -> WorkloadIssuer:
    return WorkloadIssuer("https://k8s")


def _context(workload: WorkloadIssuer, now: float = 0) -> GrantContext:
    registry = Registry("1")
    registry.add(EndpointSpec("a", "custom"), port=1, now_ms=0)
    return GrantContext(
        clients={"sp": "secret", "other": "pw"},
        default_client_id="sp",
        registry=registry,
        authority=TokenAuthority("iss"),
        workload=workload,
        federation=[FederationPolicy(issuer="https://k8s", subject="system:serviceaccount:ns:sa")],
        token_endpoint="https://ws/oidc/v1/token",
        now=now,
    )


def _details(ctx: GrantContext) -> str:
    incarnation = ctx.registry.get("a")
    assert incarnation is not None
    return json.dumps(
        [
            {
                "type": "workspace_permission",
                "object_type": "serving-endpoints",
                "object_path": incarnation.object_path,
                "actions": ["query_inference_endpoint"],
            }
        ]
    )


def test_client_authentication_methods() -> None:
    clients = {"sp": "secret"}
    assert authenticate_client({"client_id": "sp", "client_secret": "secret"}, None, clients) == "sp"
    assert authenticate_client({}, "Basic c3A6c2VjcmV0", clients) == "sp"
    assert authenticate_client({"client_id": "sp"}, "Basic c3A6c2VjcmV0", clients) == "sp"
    with pytest.raises(OAuthError) as err:
        authenticate_client({"client_id": "sp", "client_secret": "secret"}, "Basic c3A6c2VjcmV0", clients)
    assert err.value.error == "invalid_request"
    with pytest.raises(OAuthError) as err:
        authenticate_client({}, "Basic c3A=", clients)
    assert (err.value.status, err.value.error) == (401, "invalid_client")


def test_client_credentials_kinds(workload: WorkloadIssuer) -> None:
    ctx = _context(workload)
    form = {"grant_type": "client_credentials", "client_id": "sp", "client_secret": "secret"}
    assert decide(form, None, ctx) == Grant("client_credentials", "sp", "workspace", "all-apis")
    scoped = decide({**form, "authorization_details": _details(ctx), "scope": "x"}, None, ctx)
    assert (scoped.kind, scoped.scope, len(scoped.authorization_details)) == ("data_plane", "x", 1)


def test_jwt_bearer_uses_the_assertion_subject(workload: WorkloadIssuer) -> None:
    ctx = _context(workload)
    assertion = ctx.authority.issue(subject="other", kind="workspace", scope="all-apis", ttl=60, now=0)
    form = {
        "grant_type": JWT_BEARER,
        "assertion": assertion.access_token,
        "authorization_details": _details(ctx),
    }
    grant = decide(form, "Bearer whatever", ctx)
    assert (grant.grant_type, grant.subject, grant.kind) == ("jwt_bearer", "other", "data_plane")
    with pytest.raises(OAuthError, match="expired"):
        decide(form, None, _context_with(ctx, now=60))


def _context_with(ctx: GrantContext, *, now: float) -> GrantContext:
    from dataclasses import replace

    return replace(ctx, now=now)


def test_token_exchange_matches_policies(workload: WorkloadIssuer) -> None:
    ctx = _context(workload)
    token = workload.issue(subject="system:serviceaccount:ns:sa", audience="https://ws/oidc/v1/token", ttl=60, now=0)
    form = {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": token,
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
    }
    assert decide(form, None, ctx).subject == "sp"
    assert decide({**form, "client_id": "sp"}, None, ctx).subject == "sp"
    with pytest.raises(OAuthError, match="No federation policy"):
        decide({**form, "client_id": "other"}, None, ctx)
    with pytest.raises(OAuthError, match="expired"):
        decide(form, None, _context_with(ctx, now=61))
