"""Control-plane calls (OAuth tokens, endpoint metadata): small whole answers, over the data path's pools.

One HTTP stack for everything the sidecar sends: the same TLS context, keep-alive pools, connect timeout,
stale-connection rules and egress proxy as invocations (see `pool` and `connection`). Rules:
1. An answer is read whole, up to MAX_CONTROL_PLANE_BYTES; a larger one is not read further (its
   connection is dropped) and is UpstreamUnreachable.
2. Failures are already the sidecar's errors (ConnectFailed, UpstreamUnreachable, UpstreamTimeout).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from urllib.parse import urlsplit

from multidict import CIMultiDict

from proxy.errors import SidecarError, UpstreamUnreachable
from proxy.transport import Connection, Head
from proxy.upstream.pool import Upstream, origin_of

MAX_CONTROL_PLANE_BYTES = 1 << 20  # token and metadata answers are a few KiB; anything larger is refused


class _Whole:
    """A `transport.Receiver` that gathers one bounded answer into a future."""

    def __init__(self, conn: Connection, host: str) -> None:
        self._conn = conn
        self._host = host
        self._head: Head | None = None
        self._parts: list[bytes] = []
        self._size = 0
        self.done: asyncio.Future[tuple[int, CIMultiDict[str], bytes]] = asyncio.get_running_loop().create_future()

    def on_head(self, head: Head) -> None:
        self._head = head

    def on_body(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > MAX_CONTROL_PLANE_BYTES and not self.done.done():
            self.done.set_exception(UpstreamUnreachable(f"{self._host} answered over {MAX_CONTROL_PLANE_BYTES} bytes"))
            self._conn.abort()
            return
        self._parts.append(data)

    def on_end(self) -> None:
        if self._head is not None and not self.done.done():
            headers = CIMultiDict((n.decode("latin-1"), v.decode("latin-1")) for n, v in self._head.headers)
            self.done.set_result((self._head.status, headers, b"".join(self._parts)))

    def on_lost(self, error: SidecarError) -> None:
        if not self.done.done():
            self.done.set_exception(error)

    def flush(self) -> None:
        return None


class ControlPlane:
    """Whole small answers from the workspace: `fetch` returns (status, headers, body) (rule 1)."""

    def __init__(self, upstream: Upstream) -> None:
        self._upstream = upstream

    def __repr__(self) -> str:
        return f"ControlPlane({self._upstream!r})"

    async def fetch(
        self, method: str, url: str, *, headers: Mapping[str, str], body: bytes | None = None
    ) -> tuple[int, CIMultiDict[str], bytes]:
        parts = urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        lines = [f"{method} {target or '/'} HTTP/1.1", f"Host: {parts.netloc}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        lines.append(f"Content-Length: {len(body or b'')}")
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        conn = await self._upstream.connect(origin_of(url))
        whole = _Whole(conn, parts.netloc)
        conn.send(request, body or b"", whole)
        try:
            return await whole.done
        except asyncio.CancelledError:
            conn.abort()  # a caller that gave up (a timeout): the answer is not waited for
            raise
