"""The OAuth flows against the workspace token endpoint; the only module that uses authlib.

authlib builds the requests (grant parameters, client authentication); the HTTP round trip goes through
the sidecar's own upstream pool (`HttpFetch`), so token calls share its TLS context and warm connections
instead of a second HTTP stack. Flows:
- `client_credentials`: workspace token for a service principal (client_secret_basic, scope all-apis).
- `jwt_bearer`: workspace token -> data-plane token scoped by `authorization_details` (what the SDKs do).
- `token_exchange`: RFC 8693, a workload identity JWT -> workspace token (federation).
Errors become `TokenError(error, description)`; descriptions come from the token server, never a secret.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from authlib.oauth2.auth import ClientAuth
from authlib.oauth2.rfc6749.parameters import prepare_token_request
from multidict import CIMultiDict

from proxy.credentials.cache import Token
from proxy.errors import SidecarError, TokenError

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"
TOKEN_REQUEST_TIMEOUT = 30.0


class HttpFetch(Protocol):
    async def __call__(
        self, method: str, url: str, *, headers: Mapping[str, str], body: bytes | None = None
    ) -> tuple[int, CIMultiDict[str], bytes]: ...


SecretReader = Callable[[], Awaitable[str]]


class OAuthClient:
    def __init__(
        self,
        fetch: HttpFetch,
        *,
        token_url: str,
        client_id: str,
        read_secret: SecretReader | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._fetch = fetch
        self.token_url = token_url
        self.client_id = client_id
        self._read_secret = read_secret
        self._clock = clock

    def __repr__(self) -> str:
        return f"OAuthClient(token_url={self.token_url!r}, client_id={self.client_id!r})"

    async def client_credentials(self, *, scope: str = "all-apis") -> Token:
        if self._read_secret is None:
            raise TokenError("invalid_client", "no client secret configured")
        secret = await self._read_secret()
        body = prepare_token_request("client_credentials", scope=scope)
        auth = ClientAuth(self.client_id, secret, "client_secret_basic")
        _, headers, body = auth.prepare("POST", self.token_url, self._headers(), body)
        return await self._request(headers, body)

    async def jwt_bearer(self, *, assertion: str, authorization_details: str) -> Token:
        body = prepare_token_request(JWT_BEARER, assertion=assertion, authorization_details=authorization_details)
        return await self._request(self._headers(), body)

    async def token_exchange(self, *, subject_token: str, scope: str = "all-apis") -> Token:
        body = prepare_token_request(
            TOKEN_EXCHANGE,
            subject_token=subject_token,
            subject_token_type=JWT_TOKEN_TYPE,
            client_id=self.client_id,
            scope=scope,
        )
        return await self._request(self._headers(), body)

    @staticmethod
    def _headers() -> dict[str, str]:
        return {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}

    async def _request(self, headers: Mapping[str, str], body: str) -> Token:
        sent_at = self._clock()
        try:
            async with asyncio.timeout(TOKEN_REQUEST_TIMEOUT):
                status, _, payload = await self._fetch("POST", self.token_url, headers=headers, body=body.encode())
        except TimeoutError:
            raise TokenError("timeout", f"token endpoint did not answer within {TOKEN_REQUEST_TIMEOUT:.0f} s") from None
        except SidecarError as exc:
            raise TokenError("unreachable", exc.message) from None
        return parse_token_response(status, payload, sent_at)


def parse_token_response(status: int, payload: bytes, sent_at: float) -> Token:
    """A Token from a token-endpoint answer, or TokenError naming the OAuth error. Pure."""
    try:
        doc: Any = json.loads(payload)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise TokenError(
            "invalid_response", f"token endpoint answered HTTP {status} without a JSON object", status=status
        )
    if status != 200 or "error" in doc:
        error = str(doc.get("error") or doc.get("errorCode") or f"http_{status}")
        description = str(doc.get("error_description") or doc.get("errorSummary") or "")
        raise TokenError(error, description, status=status)
    try:
        access_token = str(doc["access_token"])
        expires_in = float(doc["expires_in"])
    except (KeyError, TypeError, ValueError):
        raise TokenError("invalid_response", "token response lacks access_token or expires_in", status=status) from None
    # Measure the lifetime from when the request was sent: the token cannot outlive that.
    return Token(access_token=access_token, obtained_at=sent_at, expires_at=sent_at + expires_in)
