"""Token minting and verification with an explicit clock (pure)."""

from __future__ import annotations

from proxy.emulator.tokens import TokenAuthority, TokenClaims, TokenRejection, WorkloadClaims, WorkloadIssuer


def test_issue_and_verify_round_trip() -> None:
    authority = TokenAuthority("https://ws/oidc")
    details = ({"object_path": "/serving-endpoints/abc", "actions": ["query_inference_endpoint"]},)
    issued = authority.issue(
        subject="sp", kind="data_plane", scope="all-apis", ttl=90.5, now=1000.0, authorization_details=details
    )
    assert issued.expires_in == 90
    claims = authority.verify(issued.access_token, now=1000.0)
    assert isinstance(claims, TokenClaims)
    assert (claims.subject, claims.kind, claims.authorization_details) == ("sp", "data_plane", details)
    assert claims.seconds_left(1000.0) == 90.5


def test_expired_revoked_and_foreign_tokens_are_rejected() -> None:
    authority = TokenAuthority("https://ws/oidc")
    token = authority.issue(subject="sp", kind="workspace", scope="all-apis", ttl=10, now=0).access_token
    assert authority.verify(token, now=10) == TokenRejection("token expired")
    assert isinstance(authority.verify(token, now=9.9), TokenClaims)
    assert authority.verify(token, now=0) != authority.verify("x.y.z", now=0)
    assert isinstance(TokenAuthority("https://ws/oidc").verify(token, now=0), TokenRejection)
    authority.revoke_all()
    assert authority.verify(token, now=0) == TokenRejection("token has been revoked")
    assert "generation=1" in repr(authority)


def test_workload_tokens() -> None:
    issuer = WorkloadIssuer("https://k8s")
    assert "lazy" in repr(issuer)
    token = issuer.issue(subject="system:serviceaccount:ns:sa", audience="aud", ttl=60, now=100)
    assert issuer.verify(token, now=120) == WorkloadClaims("https://k8s", "system:serviceaccount:ns:sa", ("aud",))
    assert issuer.verify(token, now=160) == TokenRejection("subject_token expired")
    assert isinstance(WorkloadIssuer("https://k8s").verify(token, now=120), TokenRejection)
    assert issuer.jwks()["keys"][0]["kty"] == "RSA"
