"""`egress.open_tunnel` against real loopback sockets, on both event loops the sidecar runs on.

A TLS echo server stands in for the upstream; the CONNECT proxy of `connect_proxy` (or a scripted
misbehaving one) sits in between. Each scenario runs on a fresh loop of each kind.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import cast

import pytest
import trustme
import uvloop

from proxy.config import EgressProxy
from proxy.errors import ConnectFailed
from proxy.upstream.egress import MAX_ANSWER_BYTES, TunnelFailed, open_tunnel
from proxy.upstream.pool import Pool, Timeouts
from tests.integration.connect_proxy import ConnectProxy

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


@pytest.fixture(params=sorted(LOOPS))
def run(request: pytest.FixtureRequest) -> Iterator[Callable[[Callable[[], Awaitable[None]]], None]]:
    """`run(scenario)`: the scenario coroutine on a fresh loop of each kind."""

    def on_loop(scenario: Callable[[], Awaitable[None]]) -> None:
        with asyncio.Runner(loop_factory=LOOPS[request.param]) as runner:
            runner.run(asyncio.wait_for(scenario(), 30))  # type: ignore[arg-type]

    yield on_loop


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


class Collector(asyncio.Protocol):
    """What the pool's connections are to the tunnel: a protocol told `connection_made` with the TLS transport."""

    def __init__(self) -> None:
        self.transport: asyncio.BaseTransport | None = None
        self.data = bytearray()
        self.got = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.data += data
        self.got.set()


@asynccontextmanager
async def tls_echo(ca: trustme.CA, name: str = "127.0.0.1") -> AsyncIterator[int]:
    """A TLS server with a certificate for `name` that echoes what it reads; yields its port."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(name).configure_cert(context)

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(4096):
                writer.write(data)
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.transport.abort()

    server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=context)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


@asynccontextmanager
async def scripted_proxy(answer: bytes | None) -> AsyncIterator[tuple[EgressProxy, list[bytes]]]:
    """A proxy that reads the CONNECT head, writes `answer` (None: nothing) and waits for the client to go;
    yields it and what it read."""
    heads: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await reader.readuntil(b"\r\n\r\n"))
        if answer is not None:
            writer.write(answer)
        await reader.read()  # until the client closes
        heads.append(b"<closed by client>")
        writer.transport.abort()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield EgressProxy("127.0.0.1", server.sockets[0].getsockname()[1]), heads
    finally:
        server.close()


def test_a_tunnel_carries_tls_to_the_real_host(run: Callable[..., None], ca: trustme.CA) -> None:
    async def scenario() -> None:
        async with tls_echo(ca) as port, ConnectProxy(require="Basic b3BzOnB3") as proxy:
            egress = EgressProxy("127.0.0.1", proxy.port, "Basic b3BzOnB3")
            transport, collector = await open_tunnel(
                egress, Collector, "127.0.0.1", port, ssl_context=client_context(ca)
            )
            assert collector.transport is transport  # handed over with connection_made
            assert transport.get_extra_info("ssl_object") is not None
            assert transport.get_extra_info("socket") is not None  # the pool polls it before reuse
            cast(asyncio.WriteTransport, transport).write(b"ping through the tunnel")  # uvloop's do not subclass it
            while bytes(collector.data) != b"ping through the tunnel":
                await asyncio.wait_for(collector.got.wait(), 10)
                collector.got.clear()
            transport.abort()
            assert proxy.heads == [f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                                   "Proxy-Authorization: Basic b3BzOnB3\r\n\r\n".encode()]  # fmt: skip
            assert b"ping" not in proxy.relayed() and proxy.tunnels[0].sent[:2] == b"\x16\x03"

    run(scenario)


def test_the_upstream_certificate_is_checked_against_the_real_host(run: Callable[..., None], ca: trustme.CA) -> None:
    async def scenario() -> None:
        async with tls_echo(ca, name="elsewhere.example") as port, ConnectProxy() as proxy:
            egress = EgressProxy("127.0.0.1", proxy.port)
            with pytest.raises(ssl.SSLCertVerificationError):
                await open_tunnel(egress, Collector, "127.0.0.1", port, ssl_context=client_context(ca))

    run(scenario)


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n", "407 Proxy Authentication"),
        (b"HTTP/1.0 403 Forbidden\r\n\r\nno", "refused the tunnel: 403 Forbidden"),
        (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "did not answer CONNECT with an HTTP/1.x status line"),
        (b"HTTP/1.1 200 Connection established\r\n\r\nearly", "sent bytes after opening the tunnel"),
        (b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * MAX_ANSWER_BYTES, f"a head over {MAX_ANSWER_BYTES} bytes"),
    ],
)
def test_a_proxy_that_does_not_open_the_tunnel_fails_naming_it(
    run: Callable[..., None], ca: trustme.CA, answer: bytes, reason: str
) -> None:
    async def scenario() -> None:
        async with scripted_proxy(answer) as (egress, heads):
            with pytest.raises(TunnelFailed) as failed:
                await open_tunnel(egress, Collector, "127.0.0.1", 443, ssl_context=client_context(ca))
            assert str(failed.value).startswith(f"proxy http://127.0.0.1:{egress.port} ")
            assert reason in str(failed.value)
            await _closed(heads)  # the connection to the proxy was not left open

    run(scenario)


def test_a_proxy_that_closes_or_cannot_be_reached_fails_naming_it(run: Callable[..., None], ca: trustme.CA) -> None:
    async def scenario() -> None:
        async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.transport.abort()

        server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
        egress = EgressProxy("127.0.0.1", server.sockets[0].getsockname()[1])
        with pytest.raises(TunnelFailed, match="closed the connection before answering CONNECT"):
            await open_tunnel(egress, Collector, "127.0.0.1", 443, ssl_context=client_context(ca))
        server.close()
        await server.wait_closed()
        with pytest.raises(TunnelFailed, match=f"proxy http://127.0.0.1:{egress.port} cannot be reached"):
            await open_tunnel(egress, Collector, "127.0.0.1", 443, ssl_context=client_context(ca))

    run(scenario)


def test_a_silent_proxy_is_bounded_by_the_connect_timeout(run: Callable[..., None], ca: trustme.CA) -> None:
    async def scenario() -> None:
        async with scripted_proxy(None) as (egress, heads):
            pool = Pool(
                "https://127.0.0.1:443",
                ssl_context=client_context(ca),
                size=1,
                timeouts=Timeouts(connect=0.3),
                proxy=egress,
            )
            with pytest.raises(ConnectFailed, match=r"handshake timed out after 0\.3 s"):
                await pool.connect()
            await _closed(heads)
            assert pool.stats().open == 0

    run(scenario)


async def _closed(heads: list[bytes]) -> None:
    """Waits (bounded) until the scripted proxy saw its client go away."""
    for _ in range(200):
        if heads and heads[-1] == b"<closed by client>":
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the connection to the proxy stayed open: {heads}")
