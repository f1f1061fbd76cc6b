"""Caller connections accepted by the parent and handed to workers (SCM_RIGHTS over a Unix SOCK_SEQPACKET pair).

Rules:
1. The parent binds the HTTP listen address once (a taken port fails the start, as with one process;
   port 0 picks one port for all; a Unix socket is made with its mode and group as one process makes
   it, and removed on stop) and is the only process that accepts on it. Descriptor passing does not
   care about the address family: workers serve Unix-socket callers exactly as TCP ones.
2. The listening sockets are read only while at least one worker is serving; otherwise connections wait
   in the kernel's backlog (up to unix.BACKLOG), so nothing is refused while a worker restarts.
3. Each accepted connection goes to the next serving worker, round robin, so N connections opened at
   once are spread evenly: a caller's few long-lived keep-alive connections land on different workers.
4. A hand-off that cannot be written at once (that worker's queue is full: it is stuck) goes to the next
   serving worker; if none takes it, the connection is closed (the caller sees a reset and may retry).
5. Out of file descriptors (EMFILE/ENFILE): accepting pauses for FD_PAUSE s and the sidecar is told
   (readiness says so for a while, as with one process).
6. The worker side (`Inbox`) reads every descriptor waiting and hands each socket to the HTTP front. A
   descriptor the kernel could not give it (the worker is out of them: MSG_CTRUNC) is a lost connection,
   reported to `on_no_descriptors`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from proxy.config import ListenAddress, UnixAddress
from proxy.downstream import unix

log = logging.getLogger("serving_sidecar")

ACCEPT_BATCH = 64  # connections accepted per readiness event, so a flood cannot starve the parent's loop
FD_PAUSE = 1.0
_MARK = b"c"  # the byte each descriptor travels with


class Target(Protocol):
    """A worker as the acceptor sees it."""

    @property
    def serving(self) -> bool: ...

    @property
    def handoff(self) -> socket.socket | None: ...


def listen(
    address: ListenAddress, *, mode: int = 0o660, group: int | None = None
) -> tuple[list[socket.socket], unix.SocketFile | None]:
    """Listening sockets for `address` (every address a host resolves to, one port; or one Unix socket
    file, secured with `mode` and `group` before it listens), non-blocking (rule 1)."""
    if isinstance(address, UnixAddress):
        sock, made = unix.listening_socket(address.path, mode=mode, group=group)
        return [sock], made
    infos = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    port = address.port
    try:
        for family, kind, proto, _, sockaddr in infos:
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((sockaddr[0], port, *sockaddr[2:]))
            port = sock.getsockname()[1]
            sock.listen(unix.BACKLOG)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets, None


class Acceptor:
    """The parent's accept loop (rules 2-5)."""

    def __init__(
        self,
        listening: tuple[list[socket.socket], unix.SocketFile | None],
        targets: Sequence[Target],
        *,
        on_no_descriptors: Callable[[str], object] | None = None,
    ) -> None:
        """`listening` as `listen` returns it. `on_no_descriptors(why)`: accept() found no file descriptor
        (rule 5); logged when None."""
        self._sockets, self._socket_file = listening
        self._targets = targets
        self._on_no_descriptors = on_no_descriptors
        self._next = 0
        self._reading = False
        self._paused: asyncio.TimerHandle | None = None
        self.handed = 0

    def __repr__(self) -> str:
        return f"Acceptor(sockets={len(self._sockets)}, reading={self._reading}, handed={self.handed})"

    @property
    def port(self) -> int:
        """The TCP port bound (0 for a Unix socket)."""
        if not self._sockets or self._sockets[0].family == socket.AF_UNIX:
            return 0
        return int(self._sockets[0].getsockname()[1])

    def update(self) -> None:
        """Read the listening sockets if and only if a worker is serving (rule 2); call when that changes."""
        want = any(target.serving for target in self._targets) and self._paused is None and bool(self._sockets)
        if want == self._reading:
            return
        loop = asyncio.get_running_loop()
        for sock in self._sockets:
            if want:
                loop.add_reader(sock.fileno(), self._accept, sock)
            else:
                loop.remove_reader(sock.fileno())
        self._reading = want

    def close(self) -> None:
        """Stop accepting and close the listening sockets (connections still in the backlog are reset)."""
        if self._paused is not None:
            self._paused.cancel()
            self._paused = None
        self._targets = []
        self.update()
        for sock in self._sockets:
            sock.close()
        self._sockets = []
        if self._socket_file is not None:
            self._socket_file.remove()
            self._socket_file = None

    def _accept(self, listener: socket.socket) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as error:
                if error.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._pause(error)
                    return
                raise
            self._hand(conn)

    def _hand(self, conn: socket.socket) -> None:
        if conn.family in (socket.AF_INET, socket.AF_INET6):
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            for _ in range(len(self._targets)):
                target = self._targets[self._next % len(self._targets)]
                self._next += 1
                if target.serving and target.handoff is not None and _send(target.handoff, conn):
                    self.handed += 1
                    return
            log.warning("no worker could take a new connection (all busy or restarting): closed it")
        finally:
            conn.close()  # the worker holds its own descriptor now

    def _pause(self, error: OSError) -> None:
        if self._on_no_descriptors is not None:
            self._on_no_descriptors(error.strerror or "too many open files")
        else:
            log.warning("cannot accept connections: %s; accepting again in %.0f s", error.strerror, FD_PAUSE)
        self._paused = asyncio.get_running_loop().call_later(FD_PAUSE, self._resume)
        self.update()

    def _resume(self) -> None:
        self._paused = None
        self.update()


def _send(handoff: socket.socket, conn: socket.socket) -> bool:
    try:
        socket.send_fds(handoff, [_MARK], [conn.fileno()])
    except (BlockingIOError, InterruptedError):
        return False  # rule 4: that worker is not reading its queue
    except OSError:
        return False  # the worker is gone
    return True


class Inbox:
    """The worker's end: descriptors from the parent become connections of the HTTP front (rule 6)."""

    def __init__(
        self,
        handoff: socket.socket,
        adopt: Callable[[socket.socket], Awaitable[None]],
        *,
        on_no_descriptors: Callable[[], object] = lambda: None,
    ) -> None:
        handoff.setblocking(False)
        self._handoff = handoff
        self._adopt = adopt
        self._on_no_descriptors = on_no_descriptors
        self._tasks: set[asyncio.Task[None]] = set()
        self._reading = False
        self.received = 0

    def __repr__(self) -> str:
        return f"Inbox(received={self.received}, reading={self._reading})"

    def start(self) -> None:
        asyncio.get_running_loop().add_reader(self._handoff.fileno(), self._receive)
        self._reading = True

    def stop(self) -> None:
        if self._reading:
            self._reading = False
            asyncio.get_running_loop().remove_reader(self._handoff.fileno())
        self._handoff.close()

    def _receive(self) -> None:
        while self._reading:
            try:
                data, fds, flags, _ = socket.recv_fds(self._handoff, len(_MARK), 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data, fds, flags = b"", [], 0
            if flags & socket.MSG_CTRUNC:
                self._on_no_descriptors()  # the kernel dropped the connection: this process has no descriptor left
            if not data and not fds:
                self.stop()  # the parent closed its end: no more connections come
                return
            for fd in fds:
                self.received += 1
                self._start(socket.socket(fileno=fd))

    def _start(self, sock: socket.socket) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(sock))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, sock: socket.socket) -> None:
        try:
            await self._adopt(sock)
        except OSError:
            with contextlib.suppress(OSError):
                sock.close()
