"""The seams between forwarding and the upstream transport: small protocols, no implementation.

The forwarder sees connections only through `Connection` and hands each request a `Receiver`; the fronts
see answers only through `Sink` (callbacks, the HTTP front) or `Reply` (a coroutine API, the gRPC front).
Tests plug fakes into these without importing the transport.

Headers travel as `(name, value)` byte pairs exactly as received; bodies as bytes, never parsed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import NamedTuple, Protocol

from proxy.errors import SidecarError

Headers = list[tuple[bytes, bytes]]

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Answer headers a proxy writes itself: hop-by-hop ones, the framing and the request id.
NOT_RELAYED = HOP_BY_HOP | {b"content-length", b"x-request-id"}


class Head(NamedTuple):
    """An upstream answer's status line and headers. `length`: its Content-Length, None when the body is
    chunked or runs until the connection closes. `block`: the headers to relay (all but NOT_RELAYED) as
    the pieces of `Name: value\r\n` lines, made while parsing so a front relays them without a second pass."""

    status: int
    headers: Headers
    length: int | None
    block: list[bytes]


class Receiver(Protocol):
    """Gets one upstream response as it is parsed, on the event loop: `on_head`, `on_body`*, `on_end`,
    or `on_lost` at any point (the connection failed; the answer is incomplete). `flush` follows every
    batch of bytes read, so a front can write once per batch."""

    def on_head(self, head: Head) -> None: ...

    def on_body(self, data: bytes) -> None: ...

    def on_end(self) -> None: ...

    def on_lost(self, error: SidecarError) -> None: ...

    def flush(self) -> None: ...


class Connection(Protocol):
    """One keep-alive connection to an upstream host, carrying one request at a time."""

    def send(self, request: bytes, body: bytes, receiver: Receiver) -> None:
        """Write the request (head and body) and route its response to `receiver`."""

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def abort(self) -> None:
        """Drop the connection now (the caller left): the upstream sees the request go away."""


class Transport(Protocol):
    """Connections by origin (`https://host:port`)."""

    def idle(self, origin: str) -> Connection | None:
        """A pooled connection checked alive just now, or None: never waits."""

    async def connect(self, origin: str) -> Connection:
        """A pooled connection, waiting for a free one or opening one (ConnectFailed, UpstreamTimeout)."""

    async def warm(self, origin: str, connections: int) -> None:
        """Open up to `connections` idle connections ahead of traffic; failures are ignored."""


Advice = list[tuple[str, str]]  # headers telling a client whether to retry (`retries.client_retry_headers`)


class Sink(Protocol):
    """Where an answer goes (a front), on the event loop: `head`, `body`*, `end`, or `fail` at any point:
    before `head` the front answers the error itself; after it, it cuts the answer off. `advice` goes on
    the answer's headers (replacing upstream ones of the same names)."""

    def head(self, head: Head, *, advice: Advice) -> None: ...

    def body(self, data: bytes) -> None: ...

    def flush(self) -> None: ...

    def end(self) -> None: ...

    def fail(self, error: SidecarError, *, advice: Advice) -> None: ...


class Reply(Protocol):
    """An answer whose body is still arriving, for coroutine callers (the gRPC front)."""

    status: int

    @property
    def headers(self) -> Mapping[str, str]:
        """Case-insensitive."""

    def chunks(self) -> AsyncIterator[bytes]: ...

    def close(self) -> None: ...
