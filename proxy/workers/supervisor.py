"""The parent's side of `--workers N`: the HTTP listener, N worker processes, their restarts and their stop.

`Workers` is the sidecar's HTTP `Listener` when N > 1. Rules:
1. `start` binds the listen address (see `handoff`) and spawns N workers, each a fresh interpreter
   (`python -m proxy.workers`) given its two socketpair ends; its environment has no `DATABRICKS_*` or
   `SERVING_SIDECAR_*` variable (the client secret stays in the parent) and its settings come over the
   channel without the client secret.
2. A worker counts as serving from its `serving` note until it exits. `problem()` is None only while all
   N serve; otherwise it says which do not, or that they are crash-looping (`restarts`).
3. A worker that exits unasked is logged with its exit code or signal and replaced by a new process in
   the same slot (same number) after the delay `restarts` gives. Its last metrics snapshot's counters
   and histograms are kept (`retired`), so totals never go down. One that does not say `serving` within
   START_TIMEOUT s is killed, which counts as an exit.
4. `stop(grace)`: accepting stops at once, every worker gets `stop {grace}` (one not yet talking gets
   SIGTERM), and all have grace + STOP_MARGIN s to exit before they are killed. Nothing restarts then.
5. `snapshots()` (each scrape) is what every worker last sent (each sends one a second, and a last one
   before it exits), with the exited workers' totals: at most a second old, and never waiting on a worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from proxy.config import ListenAddress, Settings
from proxy.credentials.sources import Credentials
from proxy.endpoints import Resolver
from proxy.errors import ConfigError
from proxy.metrics import Snapshot, combine, snapshot_from_wire, totals_only
from proxy.workers.authority import Authority
from proxy.workers.channel import Channel, Message
from proxy.workers.handoff import Acceptor, listen
from proxy.workers.process import Child
from proxy.workers.restarts import LIMIT, WINDOW, Restarts
from proxy.workers.wire import settings_to_wire

log = logging.getLogger("serving_sidecar")

STOP_MARGIN = 1.0
START_TIMEOUT = 30.0
_PRIVATE_ENV_PREFIXES = ("DATABRICKS_", "SERVING_SIDECAR_")


def worker_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The parent's environment without credentials or sidecar options (rule 1). Pure."""
    return {key: value for key, value in environ.items() if not key.startswith(_PRIVATE_ENV_PREFIXES)}


def describe_exit(returncode: int) -> str:
    """`exited with code 3`, `was killed by SIGKILL`. Pure."""
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-returncode).name}"
        return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


class _Slot:
    """Worker number `index` (1..N); its process changes with every restart."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.process: Child | None = None
        self.channel: Channel | None = None
        self.handoff: socket.socket | None = None
        self.serving = False
        self.latest: Snapshot = {}
        self.task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        pid = self.process.pid if self.process is not None else None
        return f"_Slot({self.index}, pid={pid}, serving={self.serving})"


class Workers:
    def __init__(
        self,
        settings: Settings,
        resolver: Resolver,
        credentials: Credentials,
        *,
        restarts: Restarts | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[], object] = lambda: None,
        on_no_descriptors: Callable[[str], object] | None = None,
    ) -> None:
        """`on_change` runs whenever a worker starts or stops serving (readiness follows it);
        `on_no_descriptors` when accepting finds no file descriptor."""
        self.settings = settings
        self.authority = Authority(resolver, credentials, self.broadcast)  # the parent answers the workers
        self.count = settings.workers
        self.port = 0
        self._slots = [_Slot(index) for index in range(1, self.count + 1)]
        self._restarts = restarts or Restarts()
        self._clock = clock
        self._acceptor: Acceptor | None = None
        self._retired: Snapshot = {}
        self._stopping = False
        self._on_change = on_change
        self._on_no_descriptors = on_no_descriptors

    def __repr__(self) -> str:
        return f"Workers(port={self.port}, slots={self._slots}, {self._restarts!r})"

    async def start(self, address: ListenAddress) -> int:
        """Rule 1: bind, then spawn the workers (they serve once each says so)."""
        listening = listen(address, mode=self.settings.socket_mode, group=self.settings.socket_group)
        self._acceptor = Acceptor(listening, self._slots, on_no_descriptors=self._on_no_descriptors)
        self.port = self._acceptor.port
        try:
            for slot in self._slots:
                await self._spawn(slot)
        except OSError as error:
            raise ConfigError(f"workers: cannot start a worker process ({sys.executable}): {error.strerror}") from None
        return self.port

    @property
    def pids(self) -> list[int | None]:
        """Each slot's current worker process id (None while it has none), in worker-number order."""
        return [
            None if slot.process is None or slot.process.returncode is not None else slot.process.pid
            for slot in self._slots
        ]

    def problem(self) -> str | None:
        """Rule 2."""
        if self._restarts.crash_looping(self._clock()):
            return f"workers are crash-looping ({LIMIT} exits within {WINDOW:.0f} s): restarts are held back"
        waiting = [str(slot.index) for slot in self._slots if not slot.serving]
        if waiting:
            plural = "s" if len(waiting) > 1 else ""
            return f"HTTP worker{plural} {', '.join(waiting)} of {self.count} not serving yet"
        return None

    def broadcast(self, op: str, **fields: Any) -> None:
        """A note to every worker that is talking (the authority's updates)."""
        for slot in self._slots:
            if slot.channel is not None:
                slot.channel.note(op, **fields)

    def snapshots(self) -> list[Snapshot]:
        """Rule 5: every worker's share of the metrics, the exited ones' totals included."""
        return [self._retired, *(slot.latest for slot in self._slots)]

    async def stop(self, grace: float) -> None:
        """Rule 4."""
        self._stopping = True
        if self._acceptor is not None:
            self._acceptor.close()
        running = []
        for slot in self._slots:
            if slot.process is None or slot.process.returncode is not None:
                if slot.task is not None:
                    slot.task.cancel()  # waiting to restart
                continue
            running.append(slot)
            if slot.channel is not None and slot.serving:
                slot.channel.note("stop", grace=grace)
            else:
                slot.process.send_signal(signal.SIGTERM)
        await self._wait_exits(running, grace + STOP_MARGIN)

    # --- internals ----------------------------------------------------------------------------------

    async def _spawn(self, slot: _Slot) -> None:
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        handoff, child_handoff = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        handoff.setblocking(False)
        try:
            slot.process = Child.spawn(
                self._command(slot.index, child_end.fileno(), child_handoff.fileno()),
                env=worker_environment(os.environ),
                pass_fds=(child_end.fileno(), child_handoff.fileno()),
            )
        except OSError:
            parent_end.close()
            handoff.close()
            raise
        finally:
            child_end.close()
            child_handoff.close()
        reader, writer = await asyncio.open_unix_connection(sock=parent_end)
        slot.channel = Channel(
            reader,
            writer,
            on_note=lambda op, message: self._on_note(slot, op, message),
            on_call=lambda op, message: self._on_call(slot, op, message),
            name=f"channel to worker {slot.index}",
        )
        slot.handoff = handoff
        loop = asyncio.get_running_loop()
        slot.task = loop.create_task(self._watch(slot, slot.process, slot.channel))
        loop.call_later(START_TIMEOUT, self._check_started, slot, slot.process)
        log.info("HTTP worker %d started (pid %d)", slot.index, slot.process.pid)

    def _check_started(self, slot: _Slot, process: Child) -> None:
        if slot.process is process and not slot.serving and process.returncode is None and not self._stopping:
            log.warning(
                "HTTP worker %d (pid %d) did not start serving in %.0f s: killing it",
                slot.index,
                process.pid,
                START_TIMEOUT,
            )
            process.kill()

    def _command(self, index: int, channel_fd: int, handoff_fd: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "proxy.workers",
            *("--index", str(index), "--channel", str(channel_fd), "--handoff", str(handoff_fd)),
            *("--event-loop", self.settings.event_loop),
        ]

    async def _watch(self, slot: _Slot, process: Child, channel: Channel) -> None:
        """Rule 3: read the worker's channel until it exits, then restart it unless stopping."""
        reading = asyncio.get_running_loop().create_task(channel.run())
        returncode = await process.wait()
        channel.close()
        await asyncio.gather(reading, return_exceptions=True)
        self._forget(slot)
        if self._stopping:
            return
        delay = self._restarts.exited(self._clock())
        log.warning(
            "HTTP worker %d (pid %d) %s; starting another in %.1f s",
            slot.index,
            process.pid,
            describe_exit(returncode),
            delay,
        )
        if self._restarts.crash_looping(self._clock()):
            log.error(
                "HTTP workers are crash-looping (%d exits within %.0f s): the sidecar is not ready", LIMIT, WINDOW
            )
        await self._respawn(slot, delay)

    async def _respawn(self, slot: _Slot, delay: float) -> None:
        """Start the slot's next worker after `delay`; a failed start counts as one more exit."""
        while True:
            await asyncio.sleep(delay)
            if self._stopping:
                return
            try:
                await self._spawn(slot)
                return
            except OSError as error:
                delay = self._restarts.exited(self._clock())
                log.error("HTTP worker %d could not be started (%s); trying again in %.1f s", slot.index, error, delay)

    def _forget(self, slot: _Slot) -> None:
        was_serving, slot.serving = slot.serving, False
        slot.channel = None
        if self._acceptor is not None:
            self._acceptor.update()
        if slot.handoff is not None:
            slot.handoff.close()
            slot.handoff = None
        self._retired = combine([self._retired, totals_only(slot.latest)])
        slot.latest = {}
        if was_serving:
            self._on_change()

    def _on_note(self, slot: _Slot, op: str, message: Message) -> None:
        if op == "serving":
            slot.serving = True
            if self._acceptor is not None:
                self._acceptor.update()
            log.info("HTTP worker %d serving (pid %s)", slot.index, message.get("pid"))
            self._on_change()
        elif op == "metrics":
            slot.latest = snapshot_from_wire(message.get("snapshot"))
        elif op == "no_descriptors":
            why = f"HTTP worker {slot.index} lost a connection it had no descriptor for"
            if self._on_no_descriptors is not None:
                self._on_no_descriptors(why)
            else:
                log.warning("%s", why)
        else:
            self.authority.on_note(op, message)

    async def _on_call(self, slot: _Slot, op: str, message: Message) -> Message:
        if op == "hello":
            return {"settings": settings_to_wire(self.settings)}
        return await self.authority.on_call(op, message)

    async def _wait_exits(self, slots: list[_Slot], seconds: float) -> None:
        tasks = [slot.task for slot in slots if slot.task is not None]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=seconds)
        if pending:
            for slot in slots:
                if slot.process is not None and slot.process.returncode is None:
                    log.warning("HTTP worker %d did not stop in time: killing it", slot.index)
                    slot.process.kill()
            await asyncio.wait(pending, timeout=STOP_MARGIN)
