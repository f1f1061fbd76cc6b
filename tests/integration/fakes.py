"""Hostile or odd upstreams for the security tests, all on loopback port 0.

- `CaptureServer`: plain TCP, records every byte any client sends, answers `200 OK` to anything.
- `OtherCA`: a second trustme CA, for HTTPS servers that are not the emulator; `bundle()` writes a CA file
  that trusts both it and the emulator, for a sidecar that must reach both.
- `TlsServer`: a raw TLS server whose answer to each request head is the bytes a test gives it.
- `sidecar_with(...)`: a started sidecar pointed at the emulator with a given CA file.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trustme

from proxy.app import Sidecar
from proxy.emulator import Emulator
from tests.integration.conftest import sidecar_settings


class CaptureServer:
    """Plain TCP on 127.0.0.1: everything received is kept in `received`; each read is answered `200 OK`."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.connections = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> CaptureServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(65536):
                self.received += chunk
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
                await writer.drain()
        writer.close()


class OtherCA:
    """A CA the emulator does not know, with a server certificate for 127.0.0.1."""

    def __init__(self) -> None:
        self._ca = trustme.CA(organization_name="serving-sidecar tests: another host")
        self._cert = self._ca.issue_cert("127.0.0.1", "localhost")

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._cert.configure_cert(context)
        return context

    def write(self, path: Path) -> Path:
        """This CA's certificate alone, as a PEM file."""
        path.write_bytes(self._ca.cert_pem.bytes())
        return path

    def bundle(self, emulator: Emulator, path: Path) -> Path:
        """A CA file trusting the emulator's CA and this one."""
        emulator.write_ca(path)
        path.write_bytes(path.read_bytes() + self._ca.cert_pem.bytes())
        return path


class TlsServer:
    """Raw TLS on 127.0.0.1: reads each request head (and a Content-Length body), then writes `answer`.

    `hold=True` keeps the connection open after answering (an upstream that leaves the caller waiting).
    """

    def __init__(self, ca: OtherCA, answer: bytes, *, hold: bool = False) -> None:
        self._context = ca.server_context()
        self._answer = answer
        self._hold = hold
        self.requests: list[bytes] = []
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> TlsServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self._context)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        for writer in self._open:
            writer.transport.abort()
        self._server.close()
        await self._server.wait_closed()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open.add(writer)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":", 1)[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    0,
                )
                await reader.readexactly(length)
                self.requests.append(head)
                writer.write(self._answer)
                await writer.drain()
                if self._hold:
                    await asyncio.sleep(3600)


@asynccontextmanager
async def sidecar_with(emulator: Emulator, ca_file: Path, **flags: Any) -> AsyncIterator[Sidecar]:
    """A started sidecar in front of `emulator` trusting `ca_file`; ready before it is handed over."""
    sidecar = Sidecar(sidecar_settings(emulator, ca_file, **flags))
    await sidecar.start()
    try:
        assert await sidecar.wait_ready(10), sidecar.health().reason()
        yield sidecar
    finally:
        await sidecar.stop()
