"""A small HTTP/1.1 server for local answers made whole in memory (the admin listener), on httptools.

Rules:
1. One `Handler` call per request: (method, path without query, peer address) -> `PlainAnswer`. Bodies
   are not read: a request whose body is over MAX_BODY is refused (413) and closed.
2. Keep-alive as the caller asks; a malformed request gets 400 and the connection closes.
3. A request's line and headers have HEAD_TIMEOUT seconds; an idle connection is closed after IDLE_TIMEOUT.
4. `stop(grace)` stops accepting and closes every connection once its answer is flushed (answers are
   small and written whole, so `grace` is not needed).
"""

from __future__ import annotations

import asyncio
import http
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import httptools

from proxy.config import Address

MAX_BODY = 64 * 1024
HEAD_TIMEOUT = 10.0
IDLE_TIMEOUT = 75.0
SWEEP_INTERVAL = 1.0


@dataclass(frozen=True)
class PlainAnswer:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


Handler = Callable[[str, str, str | None], PlainAnswer]  # (method, path, peer host) -> answer


class PlainServer:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.port = 0
        self.connections: set[_Connection] = set()
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        return f"PlainServer(port={self.port}, connections={len(self.connections)})"

    async def start(self, address: Address) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self), address.host, address.port, backlog=128, reuse_address=True
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        self._sweeper = loop.call_later(SWEEP_INTERVAL, self._sweep)
        return self.port

    async def stop(self, grace: float) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        for conn in list(self.connections):
            conn.close()  # answers are written whole: closing flushes what is left of them
        await server.wait_closed()

    def _sweep(self) -> None:
        now = time.monotonic()
        for conn in list(self.connections):
            if now > conn.deadline:
                conn.close()
        self._sweeper = asyncio.get_running_loop().call_later(SWEEP_INTERVAL, self._sweep)


class _Connection(asyncio.Protocol):
    def __init__(self, server: PlainServer) -> None:
        self._server = server
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._body = 0
        self.deadline = time.monotonic() + HEAD_TIMEOUT

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            self._write(PlainAnswer(400, b'{"status": "refused", "reason": "malformed HTTP request"}'), False)
            self.close()

    def on_message_begin(self) -> None:
        self._url, self._body = b"", 0
        self.deadline = time.monotonic() + HEAD_TIMEOUT

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_body(self, body: bytes) -> None:
        self._body += len(body)
        if self._body > MAX_BODY:
            self._write(PlainAnswer(413, b'{"status": "refused", "reason": "request body too large"}'), False)
            self.close()

    def on_message_complete(self) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        method = self._parser.get_method().decode("latin-1")
        path = self._url.decode("latin-1").split("?", 1)[0]
        peer = self._transport.get_extra_info("peername")
        keep_alive = self._parser.should_keep_alive()
        answer = self._server.handler(method, path, peer[0] if peer else None)
        self._write(answer, keep_alive, with_body=method != "HEAD")
        if keep_alive:
            self.deadline = time.monotonic() + IDLE_TIMEOUT
        else:
            self.close()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def _write(self, answer: PlainAnswer, keep_alive: bool, *, with_body: bool = True) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        phrase = http.HTTPStatus(answer.status).phrase
        lines = [
            f"HTTP/1.1 {answer.status} {phrase}",
            f"Content-Type: {answer.content_type}",
            f"Content-Length: {len(answer.body)}",
            *(f"{name}: {value}" for name, value in answer.headers),
        ]
        if not keep_alive:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self._transport.write(head + answer.body if with_body else head)
