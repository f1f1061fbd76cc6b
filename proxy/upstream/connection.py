"""One HTTP/1.1 connection to an upstream host: an asyncio Protocol, responses parsed by httptools.

Rules:
1. One request at a time. `send` writes head and body together; the response goes to the request's
   `Receiver` as it is parsed, with `flush()` after each batch of bytes read.
2. An idle connection that receives anything (bytes, EOF, a TLS close_notify) is closed and leaves its
   pool at once. `reuse_state()` also polls the socket right before reuse, for an EOF the loop has not read
   yet: a request is only ever written to a connection that had nothing pending, so a server that closed
   it while idle never gets our bytes (Go's net/http rule for requests that are not idempotent).
3. After a complete response the connection returns to its pool when both sides keep it alive;
   anything else (a parse error, an early close, a caller that left) closes it.
4. Informational answers: 100 is skipped; any other 1xx (101 Switching Protocols...) is an error, 502.
5. Failures reach the receiver once, as `on_lost(error)`, already translated into the sidecar's errors.
6. `deadline` (time.monotonic) is the first-byte deadline until the head arrives, then the stream-idle
   one, renewed by every read and suspended while reading is paused; the pool's sweeper enforces it.
7. Reads land in one buffer shared by every upstream connection of the process (a BufferedProtocol):
   the loop fills it and calls `buffer_updated`, which parses it all before returning, and httptools
   hands the callbacks copies, so nothing holds on to it when the next read comes. A protocol that
   takes bytes instead makes uvloop's and asyncio's TLS layer allocate 256 KiB per read and shrink it to
   the few hundred bytes read: glibc maps and unmaps that block on every read unless something earlier
   raised its mmap threshold (seen in every `--workers` worker: mmap, mremap and munmap per answer).
"""

from __future__ import annotations

import asyncio
import enum
import math
import select
import time
from typing import TYPE_CHECKING, cast

import httptools

from proxy.errors import SidecarError, UpstreamTimeout, UpstreamUnreachable
from proxy.transport import NOT_RELAYED, Head, Headers, Receiver

if TYPE_CHECKING:
    from proxy.upstream.pool import Pool

_CONTENT_LENGTH = b"content-length"
READ_BUFFER_SIZE = 65536  # bytes per read; more waiting is read on the loop's next turn
_read_buffer = memoryview(bytearray(READ_BUFFER_SIZE))  # rule 7


class Reuse(enum.Enum):
    OK = "ok"
    PENDING = "pending"
    CLOSED = "closed"


class UpstreamConnection(asyncio.BufferedProtocol):
    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self._transport: asyncio.Transport | None = None
        self._poll: select.poll | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._receiver: Receiver | None = None
        self._headers: Headers = []
        self._block: list[bytes] = []
        self._length: int | None = None
        self._first_byte = pool.timeouts.first_byte
        self._stream_idle = pool.timeouts.stream_idle
        self._skipping = False  # inside a 100 Continue answer
        self._head_seen = False
        self._paused = False
        self.requests = 0
        self.idle_since = time.monotonic()
        self.deadline = math.inf
        self.closed = False

    def __repr__(self) -> str:
        state = "closed" if self.closed else "busy" if self._receiver is not None else "idle"
        return f"UpstreamConnection({self._pool.host}, {state}, requests={self.requests})"

    # --- used by the pool and the forwarder ---------------------------------------------------------

    def reuse_state(self) -> Reuse:
        """OK when open and nothing is waiting to be read on the socket (rule 2). PENDING: unread bytes, which
        may be a close or harmless (a TLS 1.3 session ticket); either way not written to now."""
        transport = self._transport
        if self.closed or transport is None or transport.is_closing():
            return Reuse.CLOSED
        if self._poll is None:
            return Reuse.OK
        try:
            pending = self._poll.poll(0)
        except OSError:
            return Reuse.CLOSED
        return Reuse.PENDING if pending else Reuse.OK

    def send(self, request: bytes, body: bytes, receiver: Receiver) -> None:
        transport = self._transport
        if transport is None or self.closed:
            receiver.on_lost(UpstreamUnreachable(f"connection to upstream {self._pool.host} is closed"))
            return
        self._receiver = receiver
        self._head_seen = False
        self.requests += 1
        self.deadline = time.monotonic() + self._first_byte
        if len(body) < 65536:
            transport.write(request + body)
        else:  # no 16 MiB copy: two writes
            transport.write(request)
            transport.write(body)

    def pause_reading(self) -> None:
        if self._transport is not None and not self._paused:
            self._paused = True
            self._transport.pause_reading()
            self.deadline = math.inf  # the caller is slow, not the upstream (rule 6)

    def resume_reading(self) -> None:
        if self._transport is not None and self._paused:
            self._paused = False
            self._transport.resume_reading()
            self.deadline = time.monotonic() + self._stream_idle

    def abort(self) -> None:
        self._receiver = None
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._pool.forget(self)
            if self._transport is not None:
                self._transport.abort()

    def expire(self, now: float) -> None:
        """The sweeper found `deadline` passed (rule 6)."""
        waiting_head = not self._head_seen
        timeout = self._first_byte if waiting_head else self._stream_idle
        what = "send its answer" if waiting_head else "send more of its answer"
        self._fail(UpstreamTimeout(f"upstream {self._pool.host} did not {what} within {timeout:g} s"))

    # --- asyncio.BufferedProtocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        sock = transport.get_extra_info("socket")
        if sock is not None:
            self._poll = select.poll()  # poll, not select: fds above 1024 are common with many callers
            self._poll.register(sock.fileno(), select.POLLIN)

    def get_buffer(self, sizehint: int) -> memoryview:
        return _read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        receiver = self._receiver
        if receiver is None:
            self.close()  # bytes on an idle connection: the server is closing it (rule 2)
            return
        if not self._paused:
            self.deadline = time.monotonic() + self._stream_idle
        try:
            self._parser.feed_data(_read_buffer[:nbytes])
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamUnreachable(f"upstream {self._pool.host} switched protocols instead of answering"))
        except httptools.HttpParserError:
            self._fail(UpstreamUnreachable(f"upstream {self._pool.host} sent a malformed HTTP response"))
        if self._receiver is receiver:
            receiver.flush()

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        receiver, self._receiver = self._receiver, None
        self.closed = True
        self._pool.forget(self)
        if receiver is None:
            return
        if self._head_seen and self._length is None and exc is None and not self._has_transfer_encoding():
            receiver.on_end()  # a body delimited by the connection's close ends here
            return
        reason = "closed the connection" if exc is None else f"reset the connection ({type(exc).__name__})"
        when = "before answering" if not self._head_seen else "in the middle of its answer"
        receiver.on_lost(UpstreamUnreachable(f"upstream {self._pool.host} {reason} {when}"))

    # --- httptools callbacks ------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._headers = []
        self._block = []
        self._length = None

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        lower = name.lower()
        if lower not in NOT_RELAYED:
            self._block += (name, b": ", value, b"\r\n")
        elif lower == _CONTENT_LENGTH:
            self._length = int(value)

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:
            if status != 100:
                self._fail(
                    UpstreamUnreachable(f"upstream {self._pool.host} answered HTTP {status}, not a final response")
                )
            self._skipping = True
            return
        self._head_seen = True
        if self._receiver is not None:
            self._receiver.on_head(Head(status, self._headers, self._length, self._block))

    def on_body(self, body: bytes) -> None:
        if self._receiver is not None:
            self._receiver.on_body(body)

    def on_message_complete(self) -> None:
        if self._skipping:
            self._skipping = False
            return
        receiver, self._receiver = self._receiver, None
        self.deadline = math.inf
        if receiver is not None:
            receiver.on_end()  # first: the caller's answer goes out before the pool's bookkeeping
        if self._parser.should_keep_alive() and not self.closed:
            self.idle_since = time.monotonic()
            self._pool.release(self)
        else:
            self.close()

    # --- internals ----------------------------------------------------------------------------------

    def _has_transfer_encoding(self) -> bool:
        return any(name.lower() == b"transfer-encoding" for name, _ in self._headers)

    def _fail(self, error: SidecarError) -> None:
        receiver, self._receiver = self._receiver, None
        self.close()
        if receiver is not None:
            receiver.on_lost(error)
