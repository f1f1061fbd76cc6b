"""One worker process of `--workers N`: the HTTP front on connections its parent accepted, forwarding with
the parent's resolutions and tokens (the package docstring has the whole design).

Started by the parent as `python -m proxy.workers --index I --channel FD --handoff FD --event-loop LOOP`:
a fresh interpreter, so no event loop, thread or gRPC state is inherited. Rules:
1. It asks `hello` for the settings (without the client secret), logs with `worker=<I>`, builds its data
   path on the mirror (`mirror`) with an HTTP front that has no listener of its own, reads hand-offs and
   says `serving`; then it warms the configured endpoints (tokens and resolutions from the parent,
   connections of its own).
2. Every METRICS_INTERVAL s it sends the parent a metrics snapshot, and a last one before a graceful exit.
3. `stop {grace}` from the parent: the front stops as in one process (idle connections close, requests
   in flight get `grace` s), the pools close, and it exits 0.
4. The parent gone (the channel closes without a stop): it exits at once with code 1, cutting requests in
   flight. A worker never serves without its authority, and none outlives the sidecar.
5. SIGINT and SIGHUP are ignored (a terminal's Ctrl-C reaches the whole process group; the parent leads
   the drain and reloads the credentials).
   A SIGTERM sent to one worker drains it like a stop with `drain_timeout`; the parent starts another.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

from proxy import assembly, logs, runtime
from proxy.config import Settings
from proxy.downstream.http import HttpFront
from proxy.forwarding import Forwarder
from proxy.metrics import Metrics
from proxy.upstream import build_ssl_context
from proxy.upstream.control import ControlPlane
from proxy.upstream.pool import Upstream
from proxy.workers.channel import Channel, ChannelClosed, Message
from proxy.workers.handoff import Inbox
from proxy.workers.mirror import RemoteCredentials, RemoteResolver
from proxy.workers.wire import key_from_wire, resolution_from_wire, settings_from_wire, token_from_wire

log = logging.getLogger("serving_sidecar")

T = TypeVar("T")

METRICS_INTERVAL = 1.0
FINAL_WRITE_TIMEOUT = 2.0  # seconds for the last snapshot to reach the parent


class Worker:
    """The worker's state: the mirror (filled by the parent's notes) and, once configured, its data path."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.channel: Channel | None = None
        self.resolver: RemoteResolver | None = None
        self.credentials: RemoteCredentials | None = None
        self.metrics: Metrics | None = None
        self.pools: Upstream | None = None
        self.forwarder: Forwarder | None = None
        self.front: HttpFront | None = None
        self.inbox: Inbox | None = None
        self.stopping: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    def __repr__(self) -> str:
        return f"Worker({self.index}, front={self.front!r}, stopping={self.stopping.done()})"

    def attach(self, channel: Channel) -> None:
        self.channel = channel
        self.resolver = RemoteResolver(channel)
        self.credentials = RemoteCredentials(channel)

    def build(self, settings: Settings) -> HttpFront:
        """Rule 1: the data path of one process, on the mirror."""
        assert self.resolver is not None and self.credentials is not None
        self.credentials.workspace_url = settings.host
        self.metrics = metrics = Metrics()
        self.pools = assembly.upstream(settings, metrics, build_ssl_context(settings.ca_bundle))
        observer = assembly.RequestObserver(settings, metrics, self.resolver)
        self.forwarder = assembly.forwarder(settings, self.resolver, self.credentials, self.pools, metrics, observer)
        # The local routes' workspace reads: one per caller's request, with the parent's workspace token.
        local = assembly.surface(settings, ControlPlane(self.pools).fetch, self.credentials.workspace, self.resolver)
        self.front = assembly.http_front(settings, self.forwarder, observer, local)
        metrics.watch_in_flight("http", lambda: self.front.in_flight if self.front is not None else 0)
        return self.front

    def start(self, settings: Settings, handoff: socket.socket) -> list[asyncio.Task[None]]:
        """Rule 1, after `hello`: log as worker <n>, build, serve hand-offs, say `serving`; warm and push
        metrics in the background (the tasks returned)."""
        assert self.channel is not None
        logs.configure(fmt=settings.log_format, level=settings.log_level, worker=self.index)
        front = self.build(settings)
        front.start_without_listener()
        self.inbox = Inbox(handoff, front.adopt, on_no_descriptors=lambda: self.channel_note("no_descriptors"))
        self.inbox.start()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stop, settings.drain_timeout)
        self.channel.note("serving", pid=os.getpid())
        assert self.forwarder is not None
        warming = self.forwarder.warm_all(settings.endpoints, settings.warm_connections)
        return [loop.create_task(warming), loop.create_task(self.push_metrics())]

    async def drain(self, grace: float) -> None:
        """Rule 3: no more hand-offs; the front stops as in one process."""
        assert self.inbox is not None and self.front is not None
        self.inbox.stop()
        await self.front.stop(grace)

    async def finish(self, writer: asyncio.StreamWriter) -> None:
        """Rule 2's last snapshot, written out before the channel closes."""
        assert self.channel is not None and self.pools is not None and self.metrics is not None
        self.pools.close()
        self.channel.note("metrics", snapshot=self.metrics.snapshot())
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(FINAL_WRITE_TIMEOUT):
                await writer.drain()
        self.channel.close()

    def channel_note(self, op: str) -> None:
        if self.channel is not None:
            self.channel.note(op)

    def stop(self, grace: float) -> None:
        if not self.stopping.done():
            self.stopping.set_result(grace)

    def on_note(self, op: str, message: Message) -> None:
        """What the parent tells every worker (`authority`), and its stop."""
        assert self.resolver is not None and self.credentials is not None
        if op == "token":
            self.credentials.update(key_from_wire(message.get("key")), *token_from_wire(message.get("token")))
        elif op == "forget_token":
            key = key_from_wire(message.get("key"))
            if key is not None:
                self.credentials.forget(key)
        elif op == "resolution":
            found = message.get("resolution")
            name = str(message.get("name"))
            self.resolver.update(name, None if found is None else resolution_from_wire(found))
        elif op == "stop":
            self.stop(float(message.get("grace", 0.0)))
        else:
            raise ValueError(f"unknown note {op!r}")

    async def on_call(self, op: str, message: Message) -> Message:
        raise ValueError(f"unknown request {op!r}")  # the parent only sends notes

    async def push_metrics(self) -> None:
        """Rule 2."""
        assert self.channel is not None and self.metrics is not None
        while True:
            await asyncio.sleep(METRICS_INTERVAL)
            self.channel.note("metrics", snapshot=self.metrics.snapshot())


async def serve(index: int, channel_fd: int, handoff_fd: int) -> int:
    reader, writer = await asyncio.open_unix_connection(sock=socket.socket(fileno=channel_fd))
    worker = Worker(index)
    channel = Channel(reader, writer, on_note=worker.on_note, on_call=worker.on_call, name=f"worker {index}'s channel")
    worker.attach(channel)
    reading = asyncio.get_running_loop().create_task(channel.run())
    try:
        settings = settings_from_wire((await channel.call("hello", pid=os.getpid())).get("settings"))
    except ChannelClosed:
        return 1
    background = worker.start(settings, socket.socket(fileno=handoff_fd))
    grace = await _unless_orphaned(reading, asyncio.shield(worker.stopping))
    await _unless_orphaned(reading, worker.drain(grace))
    await _cancel(background)
    await worker.finish(writer)
    await _cancel([reading])
    return 0


async def _unless_orphaned(reading: asyncio.Task[None], work: Awaitable[T]) -> T:
    """`work`'s result; if the channel to the parent closes first, exit at once (rule 4)."""
    task = asyncio.ensure_future(work)
    await asyncio.wait([reading, task], return_when=asyncio.FIRST_COMPLETED)
    if not task.done():
        log.warning("the parent process is gone: exiting at once")
        runtime.exit_now(1)
    return task.result()


async def _cancel(tasks: Sequence[asyncio.Task[Any]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m proxy.workers", description="a worker of serving-sidecar run")
    parser.add_argument("--index", type=int, required=True, help="this worker's number, 1..N")
    parser.add_argument("--channel", type=int, required=True, metavar="FD", help="the channel to the parent")
    parser.add_argument("--handoff", type=int, required=True, metavar="FD", help="where accepted connections come")
    parser.add_argument("--event-loop", choices=("uvloop", "asyncio"), default="uvloop")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # rule 5
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # credentials are the parent's to reload
    logs.reseed_request_ids()  # a fresh interpreter has its own prefix already; this keeps it so however started
    logs.configure(worker=args.index)
    try:
        return runtime.run_on_loop(serve(args.index, args.channel, args.handoff), args.event_loop)
    except KeyboardInterrupt:  # pragma: no cover - SIGINT is ignored; kept for a worker run by hand
        return 130
    finally:
        sys.stdout.flush()
