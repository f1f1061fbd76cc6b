"""The data-path pool against a TLS server that runs in its own thread (so it acts while the sidecar's
event loop is blocked): stale idle connections are judged by their state, never written to."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import pytest
import trustme

from proxy.errors import SidecarError
from proxy.transport import Head
from proxy.upstream.pool import Timeouts, Upstream

REQUEST = b"POST /x HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\n"
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@dataclass
class ThreadedServer:
    """Answers each request with ANSWER; closes a connection `close_idle_after` s after an answer."""

    context: ssl.SSLContext
    close_idle_after: float | None = None
    requests: int = 0
    port: int = 0
    _listener: socket.socket = field(default_factory=socket.socket)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen()
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        self._listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                raw, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        with contextlib.suppress(OSError), self.context.wrap_socket(raw, server_side=True) as conn:
            while True:
                data = b""
                while not data.endswith(b"ok") or b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                self.requests += 1
                conn.sendall(ANSWER)
                if self.close_idle_after is not None:
                    time.sleep(self.close_idle_after)
                    return  # closes the connection while it is idle in the client's pool


@dataclass
class Collect:
    """A transport.Receiver that gathers one answer."""

    done: asyncio.Future[tuple[int, bytes]]
    status: int = 0
    body: bytes = b""

    def on_head(self, head: Head) -> None:
        self.status = head.status

    def on_body(self, data: bytes) -> None:
        self.body += data

    def on_end(self) -> None:
        self.done.set_result((self.status, self.body))

    def on_lost(self, error: SidecarError) -> None:
        self.done.set_exception(error)

    def flush(self) -> None:
        return None


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def server(ca: trustme.CA) -> Iterator[ThreadedServer]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    threaded = ThreadedServer(context)
    threaded.start()
    yield threaded
    threaded.stop()


@pytest.fixture
async def upstream(ca: trustme.CA) -> AsyncIterator[Upstream]:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    pool = Upstream(ssl_context=context, pool_size=4, timeouts=Timeouts(connect=5, first_byte=5, stream_idle=5))
    yield pool
    pool.close()


async def roundtrip(upstream: Upstream, origin: str) -> tuple[int, bytes]:
    conn = upstream.idle(origin) or await upstream.connect(origin)
    receiver = Collect(asyncio.get_running_loop().create_future())
    conn.send(REQUEST, b"ok", receiver)
    return await asyncio.wait_for(receiver.done, 5)


async def test_a_connection_the_server_closed_while_idle_is_never_written_to(
    server: ThreadedServer, upstream: Upstream
) -> None:
    origin = f"https://127.0.0.1:{server.port}"
    assert await roundtrip(upstream, origin) == (200, b"ok")
    server.close_idle_after = 0.05  # the next answer's connection is closed while idle
    assert await roundtrip(upstream, origin) == (200, b"ok")
    assert upstream.pool(origin).stats().idle == 1
    # Block the event loop: the server's close reaches the socket, but the loop cannot read the EOF yet.
    time.sleep(0.5)  # noqa: ASYNC251 - on purpose: the loop must not notice the close
    assert upstream.idle(origin) is None  # checked before reuse: not handed out
    server.close_idle_after = None
    assert await roundtrip(upstream, origin) == (200, b"ok")  # a fresh connection
    assert server.requests == 3  # nothing was written to the dead connection
    assert upstream.pool(origin).stats().open == 1  # the dead one left the pool once the loop read its close


async def test_a_connection_that_saw_eof_while_idle_leaves_the_pool_at_once(
    server: ThreadedServer, upstream: Upstream
) -> None:
    origin = f"https://127.0.0.1:{server.port}"
    server.close_idle_after = 0.05
    assert await roundtrip(upstream, origin) == (200, b"ok")
    for _ in range(100):
        if upstream.pool(origin).stats().open == 0:
            break
        await asyncio.sleep(0.02)
    assert upstream.pool(origin).stats() == upstream.pool(origin).stats().__class__(f"127.0.0.1:{server.port}", 0, 0)


@dataclass
class KeepChunks(Collect):
    """Keeps every body chunk object as handed over, to see whether a later read changed it."""

    chunks: list[bytes] = field(default_factory=list)

    def on_body(self, data: bytes) -> None:
        self.chunks.append(data)
        super().on_body(data)


async def test_chunks_of_answers_read_at_the_same_time_stay_as_they_were_sent(
    ca: trustme.CA, upstream: Upstream
) -> None:
    """Every upstream read lands in one shared buffer (connection rule 7): the body chunks handed on must
    be copies, still intact after the other connections' reads that came in the same loop turns."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    go = asyncio.Event()
    pieces = 5

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(2)
        letter = head.split(b"X-Letter: ")[1][:1]
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        await go.wait()
        for index in range(pieces):
            data = letter * 100 + str(index).encode()
            writer.write(b"%x\r\n%s\r\n" % (len(data), data))
            await writer.drain()
            await asyncio.sleep(0.02)  # each piece in a read of its own, all connections' pieces together
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=context)
    origin = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        letters = b"abcd"
        receivers = []
        for letter in letters:
            conn = await upstream.connect(origin)
            receiver = KeepChunks(asyncio.get_running_loop().create_future())
            conn.send(REQUEST.replace(b"\r\n\r\n", b"\r\nX-Letter: %c\r\n\r\n" % letter), b"ok", receiver)
            receivers.append(receiver)
        await asyncio.sleep(0.1)
        go.set()
        await asyncio.wait_for(asyncio.gather(*(r.done for r in receivers)), 10)
    finally:
        server.close()
    for letter, receiver in zip(letters, receivers, strict=True):
        expected = b"".join(bytes([letter]) * 100 + str(index).encode() for index in range(pieces))
        assert b"".join(bytes(chunk) for chunk in receiver.chunks) == expected
        assert receiver.body == expected
