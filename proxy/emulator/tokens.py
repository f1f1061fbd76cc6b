"""Tokens: the emulator's own OAuth JWTs (HS256) and a fake Kubernetes issuer's workload JWTs (RS256).

Every function takes ``now`` (Unix seconds) instead of reading a clock.

Rules:
1. An emulator token carries ``iss``, ``sub`` (client id), ``aud``, ``iat``, ``exp``, ``jti``,
   ``scope``, ``kind`` (``workspace`` | ``data_plane``), ``gen`` (revocation generation) and, for
   data-plane tokens, ``authorization_details`` (a list).
2. ``revoke_all`` bumps the generation; tokens of older generations no longer verify.
3. ``verify`` never raises for a bad token: it returns a ``TokenRejection`` with a reason.
4. Workload tokens are ordinary RS256 JWTs with ``iss``, ``sub``, ``aud`` (list), ``iat``, ``nbf``, ``exp``.
"""

from __future__ import annotations

import math
import secrets
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

TokenKind = Literal["workspace", "data_plane"]

EXPIRY_MARGIN = 30.0
"""Databricks rejects tokens with this many seconds or fewer left."""


@dataclass(frozen=True)
class TokenClaims:
    """A verified emulator token."""

    subject: str
    kind: TokenKind
    scope: str
    issued_at: float
    expires_at: float
    token_id: str
    authorization_details: tuple[dict[str, Any], ...] = ()

    def seconds_left(self, now: float) -> float:
        return self.expires_at - now


NOT_ISSUED = "invalid token"  # the rejection reason for a token this authority never issued


@dataclass(frozen=True)
class TokenRejection:
    """Why a presented token is not acceptable. ``reason`` is a short phrase for messages."""

    reason: str


@dataclass(frozen=True)
class IssuedToken:
    """A freshly minted token and the numbers for the OAuth response."""

    access_token: str
    expires_in: int
    scope: str


class TokenAuthority:
    """Mints and verifies the emulator's own tokens with a random per-instance HS256 key."""

    def __init__(self, issuer: str, *, key: bytes | None = None) -> None:
        self._issuer = issuer
        self._key = key or secrets.token_bytes(32)
        self._generation = 0

    def __repr__(self) -> str:
        return f"TokenAuthority(issuer={self._issuer!r}, generation={self._generation})"

    @property
    def issuer(self) -> str:
        return self._issuer

    def revoke_all(self) -> None:
        """Invalidate every token minted so far (rule 2)."""
        self._generation += 1

    def issue(
        self,
        *,
        subject: str,
        kind: TokenKind,
        scope: str,
        ttl: float,
        now: float,
        authorization_details: tuple[dict[str, Any], ...] = (),
    ) -> IssuedToken:
        """Mint a token valid for ``ttl`` seconds from ``now``."""
        claims: dict[str, Any] = {
            "iss": self._issuer,
            "sub": subject,
            "aud": self._issuer,
            "iat": math.floor(now),
            "exp": now + ttl,
            "jti": uuid.uuid4().hex,
            "scope": scope,
            "kind": kind,
            "gen": self._generation,
            "client_id": subject,
        }
        if kind == "data_plane":
            claims["authorization_details"] = list(authorization_details)
        token = jwt.encode(claims, self._key, algorithm="HS256")
        return IssuedToken(access_token=token, expires_in=math.floor(ttl), scope=scope)

    def verify(self, token: str, *, now: float) -> TokenClaims | TokenRejection:
        """Check signature, issuer, generation and expiry (``exp <= now`` is expired)."""
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=["HS256"],
                audience=self._issuer,
                issuer=self._issuer,
                options={"verify_exp": False, "verify_iat": False, "require": ["exp", "sub", "jti"]},
            )
        except jwt.PyJWTError:
            return TokenRejection(NOT_ISSUED)
        parsed = _claims(claims)
        if parsed is None:
            return TokenRejection("invalid token")
        if claims.get("gen") != self._generation:
            return TokenRejection("token has been revoked")
        if parsed.expires_at <= now:
            return TokenRejection("token expired")
        return parsed


def _claims(claims: dict[str, Any]) -> TokenClaims | None:
    kind = claims.get("kind")
    details = claims.get("authorization_details", [])
    if kind not in ("workspace", "data_plane") or not isinstance(details, list):
        return None
    return TokenClaims(
        subject=str(claims["sub"]),
        kind=kind,
        scope=str(claims.get("scope", "")),
        issued_at=float(claims.get("iat", 0)),
        expires_at=float(claims["exp"]),
        token_id=str(claims["jti"]),
        authorization_details=tuple(d for d in details if isinstance(d, dict)),
    )


@dataclass(frozen=True)
class WorkloadClaims:
    """A verified workload (Kubernetes service-account) token."""

    issuer: str
    subject: str
    audiences: tuple[str, ...]


class WorkloadIssuer:
    """A fake Kubernetes OIDC issuer: one RSA key, generated on first use (it costs ~50 ms)."""

    def __init__(self, issuer: str) -> None:
        self._issuer = issuer
        self._private: rsa.RSAPrivateKey | None = None

    def __repr__(self) -> str:
        return f"WorkloadIssuer(issuer={self._issuer!r}, key={'ready' if self._private else 'lazy'})"

    @property
    def issuer(self) -> str:
        return self._issuer

    def _key(self) -> rsa.RSAPrivateKey:
        if self._private is None:
            self._private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return self._private

    def issue(self, *, subject: str, audience: str, ttl: float, now: float, issuer: str | None = None) -> str:
        """Mint an RS256 service-account token; ``issuer`` overrides ``iss`` (for negative tests)."""
        claims = {
            "iss": issuer or self._issuer,
            "sub": subject,
            "aud": [audience],
            "iat": math.floor(now),
            "nbf": math.floor(now),
            "exp": now + ttl,
            "kubernetes.io": {"namespace": subject.split(":")[2] if subject.count(":") >= 3 else "default"},
        }
        return jwt.encode(claims, self._key(), algorithm="RS256", headers={"kid": "emulator-k8s"})

    def jwks(self) -> dict[str, Any]:
        """The public key as a JWK set (what a real issuer publishes)."""
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(self._key().public_key(), as_dict=True)
        return {"keys": [{**jwk, "kid": "emulator-k8s", "use": "sig", "alg": "RS256"}]}

    def verify(self, token: str, *, now: float) -> WorkloadClaims | TokenRejection:
        """Check the RS256 signature and expiry; iss/aud/sub are left to the federation policy."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return TokenRejection("subject_token is not a JWT")
        if header.get("alg") not in ("RS256", "ES256"):
            return TokenRejection("subject_token must be signed with RS256 or ES256")
        try:
            claims = jwt.decode(
                token,
                self._key().public_key(),
                algorithms=["RS256"],
                options={"verify_exp": False, "verify_aud": False, "verify_iat": False, "verify_nbf": False},
            )
        except jwt.PyJWTError:
            return TokenRejection("subject_token signature does not verify against the issuer's keys")
        return _workload_claims(claims, now)


def _workload_claims(claims: dict[str, Any], now: float) -> WorkloadClaims | TokenRejection:
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        return TokenRejection("subject_token has no exp claim")
    if exp <= now:
        return TokenRejection("subject_token expired")
    audience = claims.get("aud", [])
    audiences = (audience,) if isinstance(audience, str) else tuple(str(a) for a in audience or [])
    return WorkloadClaims(issuer=str(claims.get("iss", "")), subject=str(claims.get("sub", "")), audiences=audiences)
