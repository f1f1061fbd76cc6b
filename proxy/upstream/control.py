"""Control-plane calls (OAuth tokens, endpoint metadata): small whole answers, over aiohttp.

These are rare and off the request path, so aiohttp's client serves them well: one session, one keep-alive
pool to the workspace, the same TLS context as the data path, and the same egress-proxy decision
(`egress.proxy_for`; aiohttp opens the CONNECT tunnel). aiohttp's exceptions are translated here into
`ConnectFailed`, `UpstreamUnreachable` and `UpstreamTimeout`; nothing above sees aiohttp.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from multidict import CIMultiDict

from proxy.config import EgressProxy
from proxy.errors import ConnectFailed, UpstreamTimeout, UpstreamUnreachable
from proxy.upstream.egress import proxy_for, refusal
from proxy.upstream.pool import ConnectAttempt, ConnectObserver, Timeouts, _ignore_connect

MAX_CONTROL_PLANE_BYTES = 1 << 20  # token and metadata answers are a few KiB; anything larger is refused


def connect_result(exc: BaseException) -> str | None:
    """The `ConnectAttempt.result` for an aiohttp exception, or None if it is not a connect failure."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ClientSSLError):
        return "tls_error"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "error"
    return None


@contextlib.contextmanager
def translate_errors(url: str, proxy: EgressProxy | None = None) -> Iterator[None]:
    """Map aiohttp/asyncio failures to the sidecar's errors. Never includes headers (tokens) in messages,
    nor the proxy's credentials."""
    host = urlsplit(url).netloc
    try:
        yield
    except aiohttp.ConnectionTimeoutError as exc:  # before TimeoutError, of which it is a subclass
        raise ConnectFailed(f"cannot connect to {host}: handshake timed out") from exc
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
        raise UpstreamTimeout(f"{host} did not answer in time") from exc
    except aiohttp.ClientHttpProxyError as exc:  # the proxy answered CONNECT with something but 2xx
        raise ConnectFailed(f"cannot connect to {host}: {refusal(proxy, exc.status)}") from exc
    except aiohttp.ClientProxyConnectionError as exc:
        raise ConnectFailed(f"cannot connect to {host}: proxy {proxy} cannot be reached: {exc.strerror}") from exc
    except aiohttp.ClientConnectorError as exc:
        raise ConnectFailed(f"cannot connect to {host}: {exc.strerror or exc}") from exc
    except aiohttp.ClientError as exc:
        raise UpstreamUnreachable(f"{host} failed: {type(exc).__name__}") from exc


def _through(proxy: EgressProxy | None) -> dict[str, Any]:
    """aiohttp's arguments for a request tunnelled through `proxy` (its CONNECT carries the credentials)."""
    if proxy is None:
        return {}
    headers = {} if proxy.authorization is None else {"Proxy-Authorization": proxy.authorization}
    return {"proxy": str(proxy), "proxy_headers": headers}


class ControlPlane:
    """Whole small answers from the workspace `host`: `fetch` returns (status, headers, body), at most
    MAX_CONTROL_PLANE_BYTES of body (a larger answer is UpstreamUnreachable, and is not read further)."""

    def __init__(
        self,
        host: str,
        *,
        ssl_context: ssl.SSLContext,
        timeouts: Timeouts,
        on_connect: ConnectObserver = _ignore_connect,
        egress_proxy: EgressProxy | None = None,
    ) -> None:
        self.host = host
        self._ssl_context = ssl_context
        self._timeouts = timeouts
        self._on_connect = on_connect
        self._egress_proxy = egress_proxy
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"ControlPlane(open={self._session is not None})"

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            trace = aiohttp.TraceConfig()
            trace.on_connection_create_end.append(self._count_connect)
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=32, keepalive_timeout=self._timeouts.idle_connection, ssl=self._ssl_context
                ),
                auto_decompress=False,
                skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
                timeout=aiohttp.ClientTimeout(total=self._timeouts.first_byte, sock_connect=self._timeouts.connect),
                trace_configs=[trace],
                trust_env=False,
            )
        return self._session

    async def _count_connect(self, *_: object) -> None:
        self._on_connect(ConnectAttempt(self.host, "success"))

    async def fetch(
        self, method: str, url: str, *, headers: Mapping[str, str], body: bytes | None = None
    ) -> tuple[int, CIMultiDict[str], bytes]:
        proxy = proxy_for(url, self._egress_proxy)
        with translate_errors(url, proxy), self._observe_connect_failure():
            async with self._client().request(
                method, url, headers=headers, data=body, allow_redirects=False, **_through(proxy)
            ) as response:
                answer = bytearray()
                async for chunk in response.content.iter_any():
                    answer += chunk
                    if len(answer) > MAX_CONTROL_PLANE_BYTES:  # not read further; the connection is dropped
                        response.close()
                        raise UpstreamUnreachable(f"{self.host} answered over {MAX_CONTROL_PLANE_BYTES} bytes")
                return response.status, CIMultiDict(response.headers), bytes(answer)

    @contextlib.contextmanager
    def _observe_connect_failure(self) -> Iterator[None]:
        try:
            yield
        except aiohttp.ClientError as exc:
            result = connect_result(exc)
            if result is not None:
                self._on_connect(ConnectAttempt(self.host, result))
            raise

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
