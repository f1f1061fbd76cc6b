"""Worker processes started with posix_spawn and watched through a pidfd (Linux).

Why not fork: by the time a worker is restarted the parent runs an event loop (uvloop), gRPC's threads
and aiohttp; a forked child would inherit their state, and gRPC's fork handlers run (or refuse to) in the
middle. posix_spawn (glibc: clone with CLONE_VM | CLONE_VFORK, then exec) runs no fork handlers and the
worker starts as a fresh interpreter. Only the descriptors in `pass_fds` are inherited (everything
Python and gRPC open is close-on-exec); stdin is /dev/null, stdout and stderr are the parent's.

Exit is noticed through a pidfd on the event loop (no thread, no SIGCHLD handler); on a kernel without
pidfd_open (before 5.3) `wait()` polls every POLL_INTERVAL s instead. Signals go through the pidfd too,
so a recycled pid is never signalled.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping, Sequence

POLL_INTERVAL = 0.2


class Child:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None  # as subprocess: the exit code, or -signal number
        try:
            self._pidfd: int | None = os.pidfd_open(pid)
        except OSError:
            self._pidfd = None

    def __repr__(self) -> str:
        return f"Child(pid={self.pid}, returncode={self.returncode})"

    @classmethod
    def spawn(cls, argv: Sequence[str], *, env: Mapping[str, str], pass_fds: Sequence[int] = ()) -> Child:
        """Start `argv` (argv[0] is the executable's path) with exactly `pass_fds` inherited."""
        for fd in pass_fds:
            os.set_inheritable(fd, True)
        try:
            pid = os.posix_spawn(
                argv[0],
                list(argv),
                dict(env),
                file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)],
            )
        finally:
            for fd in pass_fds:
                os.set_inheritable(fd, False)
        return cls(pid)

    async def wait(self) -> int:
        """The exit status once the process has ended (it is reaped then)."""
        if self.returncode is not None:
            return self.returncode
        if self._pidfd is None:
            while not self._reap():  # noqa: ASYNC110 - a child's exit has no event to wait on without a pidfd
                await asyncio.sleep(POLL_INTERVAL)
            return self._returncode()
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[None] = loop.create_future()
        pidfd = self._pidfd

        def readable() -> None:
            if self._reap() and not ended.done():
                ended.set_result(None)

        loop.add_reader(pidfd, readable)
        try:
            await ended
        finally:
            loop.remove_reader(pidfd)
            self._close()
        return self._returncode()

    def send_signal(self, signum: signal.Signals) -> None:
        if self.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            if self._pidfd is not None:
                signal.pidfd_send_signal(self._pidfd, signum)
            else:
                os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def _reap(self) -> bool:
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:  # reaped by someone else: its status is lost
            self.returncode = 255
            return True
        if pid == 0:
            return False
        self.returncode = os.waitstatus_to_exitcode(status)
        return True

    def _returncode(self) -> int:
        assert self.returncode is not None
        return self.returncode

    def _close(self) -> None:
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
