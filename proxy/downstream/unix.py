"""Unix domain socket files for the local listeners: claimed, secured before anyone can connect, removed on stop.

Rules:
1. A path is claimed only when nothing is there or a stale socket is (connecting to it is refused). A
   socket that answers belongs to another running process, and a file that is not a socket is not ours
   to delete: both are an OSError that says so.
2. Mode and group are set before a caller can connect. `listening_socket` binds, sets them, then
   listens. A server that binds by itself (grpc) does it inside `private_umask`, so its file is
   owner-only until `secure` applies the configured mode.
3. `SocketFile.remove` deletes the file only while it is still the one this process made (same device
   and inode): a newer process that took the path over keeps its socket.
4. The standard library only: every front (aiohttp today, an asyncio server or grpc) can use it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

BACKLOG = 1024  # the HTTP listener's, TCP or Unix, with or without workers
PROBE_TIMEOUT = 1.0  # seconds to learn whether a socket already in place is served


@dataclass(frozen=True)
class SocketFile:
    """A socket file this process created (rule 3)."""

    path: Path
    device: int
    inode: int

    def remove(self) -> bool:
        """Delete the file if it is still ours; True if it was deleted."""
        try:
            found = os.lstat(self.path)
        except FileNotFoundError:
            return False
        if (found.st_dev, found.st_ino) != (self.device, self.inode):
            return False
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        return True


def claim(path: Path) -> None:
    """Make `path` free for a new socket: remove a stale socket, refuse anything else (rule 1)."""
    where = f"cannot listen on unix:{path}"
    try:
        found = os.lstat(path)
    except FileNotFoundError:
        if not path.parent.is_dir():
            raise OSError(f"{where}: directory {path.parent} does not exist") from None
        return
    if not stat.S_ISSOCK(found.st_mode):
        raise OSError(f"{where}: a file that is not a socket is in the way")
    if _is_served(path):
        raise OSError(f"{where}: another process is listening on it")
    path.unlink()


def _is_served(path: Path) -> bool:
    """True unless connecting is refused (nobody listens). Any other failure counts as served: keep it."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(PROBE_TIMEOUT)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError:
        return True
    finally:
        probe.close()
    return True


def secure(path: Path, *, mode: int, group: int | None) -> SocketFile:
    """Give the socket file its group (if any) and mode; the record to remove it later."""
    if group is not None:
        try:
            os.chown(path, -1, group)
        except PermissionError:
            raise OSError(f"cannot give unix:{path} to group {group}: this process is not a member") from None
    os.chmod(path, mode)
    found = os.lstat(path)
    return SocketFile(path, found.st_dev, found.st_ino)


def listening_socket(
    path: Path, *, mode: int, group: int | None, backlog: int = BACKLOG
) -> tuple[socket.socket, SocketFile]:
    """A non-blocking listening socket at `path`, secured before it listens (rules 1 and 2)."""
    claim(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
    except BaseException:
        sock.close()
        raise
    try:
        bound = secure(path, mode=mode, group=group)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        with contextlib.suppress(OSError):
            path.unlink()  # the file this bind just made
        raise
    return sock, bound


@contextlib.contextmanager
def private_umask() -> Iterator[None]:
    """Files created inside are owner-only (rule 2). The umask is process-wide: keep the block short."""
    previous = os.umask(0o177)
    try:
        yield
    finally:
        os.umask(previous)
