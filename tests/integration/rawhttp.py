"""HTTP/1.1 over raw loopback sockets: requests written byte for byte, answers read by hand.

Nothing here normalises what it sends, so tests can put exactly the bytes they mean on the wire (hostile
framings included) and see exactly what comes back. Shared by the integration tests and by
`scripts/connections.py`; it needs only the standard library.

- `request(...)`: the bytes of one request (Content-Length or chunked framing, extra header lines).
- `read_response(reader)`: one answer: status line, headers, body (Content-Length, chunked or until EOF).
- `exchange(connection, path, body)`: one keep-alive request and its answer.
- `read_until_closed(reader, seconds)`: what the peer still sends until it closes (EOF or reset).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]
Header = tuple[str, str]

JSON_HEADERS: tuple[Header, ...] = (("Content-Type", "application/json"),)


@dataclass(frozen=True)
class Response:
    version: str
    status: int
    reason: str
    headers: tuple[Header, ...]
    body: bytes

    def header(self, name: str) -> str | None:
        """The value of the first header line called `name` (any case), or None."""
        return next((value for key, value in self.headers if key.lower() == name.lower()), None)

    @property
    def closes(self) -> bool:
        """True when the answer says the connection ends after it."""
        connection = (self.header("Connection") or "").lower()
        return "close" in connection or (self.version == "HTTP/1.0" and "keep-alive" not in connection)

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    path: str,
    body: bytes = b"",
    *,
    method: str = "POST",
    headers: Iterable[Header] = JSON_HEADERS,
    chunks: Sequence[bytes] | None = None,
    version: str = "HTTP/1.1",
) -> bytes:
    """One request with a Host line; framed by Content-Length, or chunked as `chunks` when given."""
    lines = [f"{method} {path} {version}", "Host: 127.0.0.1", *(f"{name}: {value}" for name, value in headers)]
    if chunks is None:
        lines.append(f"Content-Length: {len(body)}")
        payload = body
    else:
        lines.append("Transfer-Encoding: chunked")
        payload = chunked(chunks)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload


def chunked(chunks: Iterable[bytes]) -> bytes:
    """`chunks` in chunked framing, with the last (empty) chunk; empty pieces are left out."""
    return b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in chunks if piece) + b"0\r\n\r\n"


async def read_response(reader: asyncio.StreamReader) -> Response:
    """One answer; raises asyncio.IncompleteReadError if the connection ends before it is whole."""
    status_line, *lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    version, _, rest = status_line.partition(" ")
    code, _, reason = rest.partition(" ")
    headers = tuple((name.strip(), value.strip()) for name, _, value in (line.partition(":") for line in lines if line))
    response = Response(version, int(code), reason, headers, b"")
    return Response(version, int(code), reason, headers, await _read_body(reader, response))


async def _read_body(reader: asyncio.StreamReader, response: Response) -> bytes:
    if response.status < 200 or response.status in (204, 304):
        return b""
    length = response.header("Content-Length")
    if length is not None:
        return await reader.readexactly(int(length))
    if (response.header("Transfer-Encoding") or "").lower() == "chunked":
        return await _read_chunks(reader)
    return await reader.read()  # neither: the body runs to the end of the connection


async def _read_chunks(reader: asyncio.StreamReader) -> bytes:
    pieces = []
    while size := int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16):
        pieces.append(await reader.readexactly(size))
        await reader.readexactly(2)
    while await reader.readuntil(b"\r\n") != b"\r\n":  # trailer lines, then the empty line
        pass
    return b"".join(pieces)


class _ResetAsEnd(asyncio.StreamReaderProtocol):
    """A reset (or a failed write) ends the stream like an EOF instead of poisoning the reader, so an answer
    that arrived before it can still be read: a server that refuses a request and closes while the caller is
    still writing resets the connection, and its 400 must stay readable."""

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(None)


async def open_connection(port: int, *, receive_buffer: int | None = None) -> Connection:
    """A loopback connection; `receive_buffer` shrinks SO_RCVBUF before connecting (a caller that reads slowly).
    Reading it after a reset gives what arrived before, then EOF; writing raises ConnectionError."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    reader = asyncio.StreamReader(loop=loop)
    protocol = _ResetAsEnd(reader, loop=loop)
    transport, _ = await loop.create_connection(lambda: protocol, sock=sock)
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


async def exchange(
    connection: Connection, path: str, body: bytes, *, headers: Iterable[Header] = JSON_HEADERS
) -> Response:
    """One keep-alive request with a Content-Length body on an open connection, and its answer."""
    reader, writer = connection
    writer.write(request(path, body, headers=headers))
    await writer.drain()
    return await read_response(reader)


async def read_until_closed(reader: asyncio.StreamReader, seconds: float, *, limit: int = 1 << 26) -> bytes:
    """The bytes the peer sends until it closes (EOF or reset). TimeoutError if it has not within
    `seconds`; AssertionError if it sends more than `limit` bytes (it is not closing, it is still answering)."""
    received = bytearray()
    async with asyncio.timeout(seconds):
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(1 << 16):
                received += chunk
                assert len(received) <= limit, f"still receiving after {len(received)} bytes: not closed"
    return bytes(received)


def close(writer: asyncio.StreamWriter) -> None:
    """Close without waiting; a connection the peer already reset is fine."""
    with contextlib.suppress(Exception):
        writer.close()
