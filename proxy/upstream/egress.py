"""Egress through an HTTP proxy: which upstreams go through it (NO_PROXY) and the CONNECT tunnel.

Rules:
1. Only `https://` upstreams use the proxy (it comes from HTTPS_PROXY); plain `http://` ones (an emulator
   without TLS) are reached directly.
2. NO_PROXY as curl and Python's requests read it: comma-separated entries, case and a trailing dot
   ignored; `*` bypasses the proxy for every host; `example.com`, `.example.com` and `*.example.com`
   match that host and all its subdomains; an IP address or CIDR range (`10.0.0.0/8`, `::1`) matches the
   addresses in it (an address never matches a name); `HOST:PORT` (`[v6]:PORT`) matches only that port.
   Loopback is not bypassed unless listed.
3. The tunnel: `CONNECT host:port HTTP/1.1` with `Host` (and `Proxy-Authorization` when the proxy URL
   has credentials); any answer but 2xx fails. The answer's head is bounded (MAX_ANSWER_BYTES); the
   caller bounds the time. Then TLS to the upstream inside the tunnel, `server_hostname` the upstream
   host: the proxy relays only encrypted bytes, never a token or a request line.
4. Failures of the proxy are `TunnelFailed`, an OSError whose `strerror` names the proxy and what went
   wrong (never the credentials), so callers translate it like any other connect failure. TLS errors
   stay `ssl.SSLError`.
"""

from __future__ import annotations

import asyncio
import http
import ipaddress
import re
import ssl
from collections.abc import Callable, Iterable
from typing import TypeVar
from urllib.parse import urlsplit

from proxy.config import EgressProxy

MAX_ANSWER_BYTES = 16 * 1024
_HOST = re.compile(r"[A-Za-z0-9._:%-]+")  # a name or an address: nothing that could split the CONNECT line

P = TypeVar("P", bound=asyncio.BaseProtocol)


class TunnelFailed(OSError):
    """The proxy did not give us a tunnel (rule 4)."""

    def __init__(self, message: str) -> None:
        super().__init__(None, message)

    def __str__(self) -> str:
        return str(self.strerror)


# --- the decision (pure) ----------------------------------------------------------------------------


def proxy_for(url: str, egress: EgressProxy | None) -> EgressProxy | None:
    """The proxy to tunnel through to reach `url`, or None to connect directly (rules 1 and 2)."""
    if egress is None:
        return None
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        return None
    return None if bypasses(parts.hostname, parts.port or 443, egress.no_proxy) else egress


def bypasses(host: str, port: int, no_proxy: Iterable[str]) -> bool:
    """True when a NO_PROXY entry matches `host` (a name or an IP address) on `port` (rule 2)."""
    name = host.strip("[]").rstrip(".").lower()
    return any(_matches(name, port, entry.strip().lower()) for entry in no_proxy)


def _matches(name: str, port: int, entry: str) -> bool:
    if entry == "*":
        return True
    pattern, entry_port = _split_port(entry)
    if not pattern or entry_port not in (None, port):
        return False
    address, network = _ip_address(name), _ip_network(pattern)
    if address is not None or network is not None:
        return address is not None and network is not None and address in network
    suffix = pattern.removeprefix("*").strip(".")
    return name == suffix or name.endswith("." + suffix)


def _split_port(entry: str) -> tuple[str, int | None]:
    """`host`, `host:port`, `[v6]`, `[v6]:port` or a bare IPv6 address; a malformed port matches no port."""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        port = rest.removeprefix(":")
    elif entry.count(":") == 1:
        host, _, port = entry.partition(":")
    else:
        return entry, None
    if not port:
        return host, None
    return host, int(port) if port.isdigit() else -1


def _ip_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _ip_network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


def connect_request(host: str, port: int, authorization: str | None) -> bytes:
    """The CONNECT request for `host:port` (rule 3)."""
    if not _HOST.fullmatch(host):
        raise TunnelFailed(f"{host!r} is not a host name a proxy can be asked for")
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
    if authorization:
        lines.append(f"Proxy-Authorization: {authorization}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def answer_status(head: bytes) -> int | None:
    """The status code of a proxy's answer (`HTTP/1.x NNN reason`), or None when it is not one."""
    parts = head.split(b"\r\n", 1)[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or len(parts[1]) != 3 or not parts[1].isdigit():
        return None
    return int(parts[1])


def refusal(proxy: EgressProxy | None, status: int) -> str:
    """Why the proxy's answer `status` means no tunnel: names the proxy and the status, never the credentials."""
    try:
        phrase = f"{status} {http.HTTPStatus(status).phrase}"
    except ValueError:
        phrase = str(status)
    hint = " (check the user and password in the proxy URL)" if status == 407 else ""
    return f"proxy {proxy or '(unknown)'} refused the tunnel: {phrase}{hint}"


# --- the tunnel (I/O) -------------------------------------------------------------------------------


async def open_connection(
    proxy: EgressProxy | None,
    protocol_factory: Callable[[], P],
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None,
) -> tuple[asyncio.BaseTransport, P]:
    """TCP and TLS to `host:port`: directly when `proxy` is None, else inside the proxy's tunnel. Plain TCP
    when `ssl_context` is None (only a plain http:// loopback workspace, which never goes through a proxy:
    `proxy_for` answers None for anything but https)."""
    if proxy is None:
        loop = asyncio.get_running_loop()
        hostname = host if ssl_context is not None else None
        return await loop.create_connection(protocol_factory, host, port, ssl=ssl_context, server_hostname=hostname)
    assert ssl_context is not None, "tunnels carry TLS only"
    return await open_tunnel(proxy, protocol_factory, host, port, ssl_context=ssl_context)


async def open_tunnel(
    proxy: EgressProxy,
    protocol_factory: Callable[[], P],
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext,
) -> tuple[asyncio.BaseTransport, P]:
    """CONNECT through `proxy`, then TLS to `host` inside the tunnel; the protocol gets `connection_made`
    with the TLS transport. TunnelFailed or ssl.SSLError on failure (rules 3 and 4)."""
    loop = asyncio.get_running_loop()
    try:
        transport, answer = await loop.create_connection(lambda: _ConnectAnswer(proxy), proxy.host, proxy.port)
    except OSError as exc:
        raise TunnelFailed(f"proxy {proxy} cannot be reached: {exc.strerror or type(exc).__name__}") from None
    try:
        transport.write(connect_request(host, port, proxy.authorization))
        await answer.tunnel_opened()
        protocol = protocol_factory()
        tls = await loop.start_tls(transport, protocol, ssl_context, server_hostname=host)
    except BaseException:
        answer.abandon()
        transport.abort()
        raise
    if tls is None:  # the loop gave no transport back: nothing to hand over
        transport.abort()
        raise TunnelFailed(f"proxy {proxy}: TLS could not be started inside the tunnel")
    protocol.connection_made(tls)
    return tls, protocol


class _ConnectAnswer(asyncio.Protocol):
    """Reads the proxy's answer to CONNECT, up to the blank line that ends its head (rule 3)."""

    def __init__(self, proxy: EgressProxy) -> None:
        self._proxy = proxy
        self._buffer = bytearray()
        self._head: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def __repr__(self) -> str:
        return f"_ConnectAnswer({self._proxy}, received={len(self._buffer)}, done={self._head.done()})"

    async def tunnel_opened(self) -> None:
        """Returns once the proxy answered 2xx with nothing after its head; TunnelFailed otherwise."""
        head = await self._head
        end = head.find(b"\r\n\r\n") + 4
        status = answer_status(head)
        if status is None:
            raise TunnelFailed(f"proxy {self._proxy} did not answer CONNECT with an HTTP/1.x status line")
        if not 200 <= status < 300:
            raise TunnelFailed(refusal(self._proxy, status))
        if end < len(head):
            raise TunnelFailed(f"proxy {self._proxy} sent bytes after opening the tunnel, before TLS began")

    def abandon(self) -> None:
        self._head.cancel()  # no-op once done; a pending answer nobody awaits any more

    def data_received(self, data: bytes) -> None:
        if self._head.done():
            return
        self._buffer += data
        if b"\r\n\r\n" in self._buffer:
            self._head.set_result(bytes(self._buffer))
        elif len(self._buffer) > MAX_ANSWER_BYTES:
            self._fail(f"proxy {self._proxy} answered CONNECT with a head over {MAX_ANSWER_BYTES} bytes")

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(f"proxy {self._proxy} closed the connection before answering CONNECT")

    def _fail(self, message: str) -> None:
        if not self._head.done():
            self._head.set_exception(TunnelFailed(message))
