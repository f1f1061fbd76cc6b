"""A CONNECT-only HTTP proxy on loopback for tests: records every request head and every byte it relays.

It opens tunnels only to 127.0.0.0/8 (anything else gets 403), answers any other method with 405, and
with `require` set answers 407 unless `Proxy-Authorization` carries exactly that value.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from dataclasses import dataclass, field
from types import TracebackType

HEAD_LIMIT = 16 * 1024


@dataclass
class Tunnel:
    """One CONNECT the proxy served: its target and the bytes relayed each way."""

    target: str
    sent: bytearray = field(default_factory=bytearray)  # client -> upstream
    received: bytearray = field(default_factory=bytearray)  # upstream -> client


@dataclass
class ConnectProxy:
    require: str | None = None  # the Proxy-Authorization value demanded, if any
    heads: list[bytes] = field(default_factory=list)  # every request head, as received
    tunnels: list[Tunnel] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def relayed(self) -> bytes:
        """Every byte relayed through every tunnel, both ways."""
        return b"".join(bytes(t.sent) + bytes(t.received) for t in self.tunnels)

    def tunnels_to(self, port: int) -> list[Tunnel]:
        return [t for t in self.tunnels if t.target == f"127.0.0.1:{port}"]

    async def __aenter__(self) -> ConnectProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0, limit=HEAD_LIMIT)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.transport.abort()
            return
        self.heads.append(head)
        refusal = self._refusal(head)
        if refusal is not None:
            writer.write(refusal)
            await _close(writer)
            return
        target = head.split(b" ", 2)[1].decode()
        host, _, port = target.rpartition(":")
        try:
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
        except OSError:
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await _close(writer)
            return
        self._writers.add(up_writer)
        tunnel = Tunnel(target)
        self.tunnels.append(tunnel)
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await asyncio.gather(_pipe(reader, up_writer, tunnel.sent), _pipe(up_reader, writer, tunnel.received))

    def _refusal(self, head: bytes) -> bytes | None:
        lines = head.decode("latin-1").split("\r\n")
        method, _, rest = lines[0].partition(" ")
        target = rest.partition(" ")[0]
        if method != "CONNECT":
            return b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        host = target.rpartition(":")[0].strip("[]")
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            return b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        headers = {
            name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])
        }
        if self.require is not None and headers.get("proxy-authorization") != self.require:
            return (
                b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                b'Proxy-Authenticate: Basic realm="test"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n'
            )
        return None


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter, record: bytearray) -> None:
    try:
        while data := await source.read(65536):
            record += data
            sink.write(data)
            await sink.drain()
    except ConnectionError:
        pass
    finally:
        sink.close()


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
