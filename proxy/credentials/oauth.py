"""The OAuth flows against the workspace token endpoint; the only module that uses authlib.

authlib builds the requests (grant parameters, client authentication); the HTTP round trip goes through
the sidecar's own upstream pool (`HttpFetch`), so token calls share its TLS context and warm connections
instead of a second HTTP stack. Flows:
- `client_credentials`: workspace token for a service principal (client_secret_basic, scope all-apis).
- `jwt_bearer`: workspace token -> data-plane token scoped by `authorization_details` (what the SDKs do).
- `token_exchange`: RFC 8693, a workload identity JWT -> workspace token (federation).
Errors become `TokenError(error, description)`; descriptions come from the token server, never a secret.

Token answers are untrusted input, validated here at the edge (`parse_token_response`):
1. `access_token` is a non-empty string of bearer-token characters (RFC 6750 b64token: letters, digits,
   `-._~+/`, then `=` padding), at most MAX_TOKEN_CHARS: anything else (null, an object, "", a CR/LF that
   would split a header) is an `invalid_response` error, and the value is never quoted.
2. `expires_in` is a finite positive number (JSON number or numeric string, not a boolean). A lifetime
   that leaves the token unusable on arrival (<= schedule.UNUSABLE_MARGIN) is an `unusable_token` error,
   backed off like any failed fetch; one over MAX_EXPIRES_IN is clamped to it (refreshed at least daily).
3. The error code is kept only when it is a short RFC 6749 error string; the description is redacted,
   made one line and cut to a few hundred characters (`logs.untrusted_text`) before anyone sees it.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from authlib.oauth2.auth import ClientAuth
from authlib.oauth2.rfc6749.parameters import prepare_token_request
from multidict import CIMultiDict

from proxy.credentials.cache import Token
from proxy.credentials.schedule import UNUSABLE_MARGIN
from proxy.errors import SidecarError, TokenError
from proxy.logs import Redactor, untrusted_text

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"
TOKEN_REQUEST_TIMEOUT = 30.0
MAX_TOKEN_CHARS = 64 * 1024
MAX_EXPIRES_IN = 24 * 3600.0
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9._~+/-]+=*")
_ERROR_CODE = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]{1,64}")  # RFC 6749 section 5.2, bounded
_JSON_TYPES = {type(None): "null", dict: "an object", list: "an array", bool: "a boolean", int: "a number"}


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
        return await self._request(headers, body, redact=Redactor([secret]))

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

    async def _request(self, headers: Mapping[str, str], body: str, *, redact: Redactor | None = None) -> Token:
        sent_at = self._clock()
        try:
            async with asyncio.timeout(TOKEN_REQUEST_TIMEOUT):
                status, _, payload = await self._fetch("POST", self.token_url, headers=headers, body=body.encode())
        except TimeoutError:
            raise TokenError("timeout", f"token endpoint did not answer within {TOKEN_REQUEST_TIMEOUT:.0f} s") from None
        except SidecarError as exc:
            raise TokenError("unreachable", exc.message) from None
        return parse_token_response(status, payload, sent_at, redact=redact)


def parse_token_response(status: int, payload: bytes, sent_at: float, *, redact: Redactor | None = None) -> Token:
    """A Token from a token-endpoint answer, or TokenError naming what is wrong (module rules). Pure."""
    doc = _json_object(payload)
    if doc is None:
        raise TokenError(
            "invalid_response", f"token endpoint answered HTTP {status} without a JSON object", status=status
        )
    if status != 200 or "error" in doc:
        raise _oauth_error(status, doc, redact)
    access_token = _access_token(doc.get("access_token"), status)
    expires_in = _expires_in(doc.get("expires_in"), status)
    # Measure the lifetime from when the request was sent: the token cannot outlive that.
    return Token(access_token=access_token, obtained_at=sent_at, expires_at=sent_at + expires_in)


def _json_object(payload: bytes) -> dict[str, Any] | None:
    try:
        doc: Any = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None


def _oauth_error(status: int, doc: dict[str, Any], redact: Redactor | None) -> TokenError:
    code = doc.get("error") or doc.get("errorCode")
    error = code if isinstance(code, str) and _ERROR_CODE.fullmatch(code) else f"http_{status}"
    description = doc.get("error_description") or doc.get("errorSummary") or ""
    text = description if isinstance(description, str) else json.dumps(description)
    return TokenError(error, untrusted_text(text, redact=redact), status=status)


def _access_token(value: Any, status: int) -> str:
    """Rule 1; the value itself never appears in the error."""
    if not isinstance(value, str):
        problem = f"access_token is {_json_type(value)}, not a string"
    elif not value:
        problem = "access_token is empty"
    elif len(value) > MAX_TOKEN_CHARS:
        problem = f"access_token is {len(value)} characters long (at most {MAX_TOKEN_CHARS})"
    elif not _TOKEN_CHARS.fullmatch(value):
        problem = "access_token holds characters a bearer token cannot have (RFC 6750)"
    else:
        return value
    raise TokenError("invalid_response", f"token endpoint answered an unusable token: {problem}", status=status)


def _expires_in(value: Any, status: int) -> float:
    """Rule 2: seconds the token lives, clamped to MAX_EXPIRES_IN."""
    seconds = _seconds(value)
    if seconds is None or seconds <= 0:
        raise TokenError(
            "invalid_response",
            f"token endpoint answered expires_in {_describe(value)}, not a finite positive number of seconds",
            status=status,
        )
    if seconds <= UNUSABLE_MARGIN:
        raise TokenError(
            "unusable_token",
            f"token endpoint granted a token that expires in {seconds:g} s: unusable on arrival (the sidecar "
            f"needs more than {UNUSABLE_MARGIN:.0f} s left; Databricks refuses tokens with 30 s or less)",
            status=status,
        )
    return min(seconds, MAX_EXPIRES_IN)


def _seconds(value: Any) -> float | None:
    """A finite number from a JSON number or a numeric string; None for anything else (booleans included)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return float(max(-(10**18), min(value, 10**18)))  # a 400-digit integer must not overflow float()
    if not isinstance(value, float | str):
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) else None


def _describe(value: Any) -> str:
    if isinstance(value, int | float | str):
        return untrusted_text(json.dumps(value), limit=40)
    return _json_type(value)


def _json_type(value: Any) -> str:
    if isinstance(value, str):
        return "a string"
    return _JSON_TYPES.get(type(value), "a number")
