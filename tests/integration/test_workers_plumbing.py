"""The parent-worker plumbing on real sockets: the JSON channel, and connections handed over by descriptor."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from proxy.config import Address
from proxy.errors import EndpointNotFound
from proxy.workers.channel import Channel, ChannelClosed, Message
from proxy.workers.handoff import Acceptor, Inbox, listen

# --- the channel ------------------------------------------------------------------------------------


@dataclass
class Side:
    channel: Channel
    notes: list[tuple[str, Message]] = field(default_factory=list)
    task: asyncio.Task[None] | None = None


async def side(sock: socket.socket, answer: Any = None) -> Side:
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    notes: list[tuple[str, Message]] = []

    async def on_call(op: str, message: Message) -> Message:
        return await answer(op, message)

    channel = Channel(reader, writer, on_note=lambda op, m: notes.append((op, m)), on_call=on_call, name="test")
    made = Side(channel, notes)
    made.task = asyncio.create_task(channel.run())
    return made


@pytest.fixture
async def pair() -> AsyncIterator[tuple[Side, Side]]:
    one, two = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)

    async def answer(op: str, message: Message) -> Message:
        if op == "slow":
            await asyncio.sleep(0.2)
        if op == "missing":
            raise EndpointNotFound(f"serving endpoint '{message['name']}' does not exist")
        if op == "bug":
            raise KeyError("oops")
        return {"op": op, "echo": message.get("value")}

    parent, worker = await side(one, answer), await side(two, answer)
    yield parent, worker
    for end in (parent, worker):
        end.channel.close()
        assert end.task is not None
        await asyncio.gather(end.task, return_exceptions=True)


async def test_calls_are_answered_in_any_order_and_notes_arrive(pair: tuple[Side, Side]) -> None:
    parent, worker = pair
    slow = asyncio.create_task(worker.channel.call("slow", value=1))
    fast = await worker.channel.call("fast", value=2)
    assert fast == {"op": "fast", "echo": 2} and not slow.done()  # the slow call did not hold it up
    assert await slow == {"op": "slow", "echo": 1}
    parent.channel.note("token", value="x")
    for _ in range(100):
        if worker.notes:
            break
        await asyncio.sleep(0.01)
    assert worker.notes == [("token", {"op": "token", "value": "x"})]


async def test_errors_travel_with_their_type_and_bugs_as_internal_errors(pair: tuple[Side, Side]) -> None:
    _, worker = pair
    with pytest.raises(EndpointNotFound, match="'typo' does not exist"):
        await worker.channel.call("missing", name="typo")
    with pytest.raises(Exception, match=r"internal error in serving-sidecar \(KeyError\)"):
        await worker.channel.call("bug")


async def test_when_the_other_side_goes_waiting_calls_fail_and_run_returns(pair: tuple[Side, Side]) -> None:
    parent, worker = pair
    waiting = asyncio.create_task(worker.channel.call("slow"))
    await asyncio.sleep(0.05)
    parent.channel.close()
    with pytest.raises(ChannelClosed):
        await waiting
    assert worker.task is not None
    await asyncio.wait_for(worker.task, 5)
    assert worker.channel.closed
    with pytest.raises(ChannelClosed):
        await worker.channel.call("fast")


async def test_a_frame_over_the_limit_closes_the_channel() -> None:
    one, two = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    worker = await side(two)
    one.sendall(struct.pack(">I", 2**31))
    assert worker.task is not None
    await asyncio.wait_for(worker.task, 5)
    assert worker.channel.closed
    one.close()


# --- hand-off ---------------------------------------------------------------------------------------


@dataclass
class FakeWorker:
    """A worker as the acceptor sees it, with an Inbox that records the connections it gets."""

    serving: bool = True
    handoff: socket.socket | None = None
    inbox: Inbox | None = None
    got: list[socket.socket] = field(default_factory=list)

    def start(self) -> None:
        self.handoff, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.handoff.setblocking(False)

        async def adopt(sock: socket.socket) -> None:
            self.got.append(sock)

        self.inbox = Inbox(theirs, adopt)
        self.inbox.start()

    def stop(self) -> None:
        if self.inbox is not None:
            self.inbox.stop()
        for sock in self.got:
            sock.close()
        if self.handoff is not None:
            self.handoff.close()


async def connect(port: int, count: int) -> list[asyncio.StreamWriter]:
    writers = []
    for _ in range(count):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writers.append(writer)
    return writers


async def until(check: Any, seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


async def test_connections_go_round_robin_to_serving_workers_only() -> None:
    workers = [FakeWorker(), FakeWorker(), FakeWorker(serving=False)]
    for worker in workers:
        worker.start()
    acceptor = Acceptor(listen(Address("127.0.0.1", 0)), workers)
    acceptor.update()
    writers = await connect(acceptor.port, 6)
    await until(lambda: len(workers[0].got) + len(workers[1].got) == 6)
    assert [len(worker.got) for worker in workers] == [3, 3, 0]
    acceptor.close()
    for writer in writers:
        writer.close()
    for worker in workers:
        worker.stop()


async def test_with_no_worker_serving_connections_wait_in_the_backlog() -> None:
    worker = FakeWorker(serving=False)
    worker.start()
    acceptor = Acceptor(listen(Address("127.0.0.1", 0)), [worker])
    acceptor.update()
    writers = await connect(acceptor.port, 3)  # the kernel completes the handshakes; nobody accepts
    await asyncio.sleep(0.2)
    assert worker.got == []
    worker.serving = True
    acceptor.update()
    await until(lambda: len(worker.got) == 3)
    acceptor.close()
    for writer in writers:
        writer.close()
    worker.stop()


async def test_a_worker_that_went_away_is_skipped() -> None:
    dead, alive = FakeWorker(), FakeWorker()
    dead.start()
    alive.start()
    assert dead.inbox is not None
    dead.inbox.stop()  # its end of the hand-off is closed: sending to it fails
    acceptor = Acceptor(listen(Address("127.0.0.1", 0)), [dead, alive])
    acceptor.update()
    writers = await connect(acceptor.port, 4)
    await until(lambda: len(alive.got) == 4)
    assert acceptor.handed == 4
    acceptor.close()
    for writer in writers:
        writer.close()
    alive.stop()
    dead.stop()


async def test_a_handed_connection_works_end_to_end() -> None:
    worker = FakeWorker()
    worker.start()
    acceptor = Acceptor(listen(Address("127.0.0.1", 0)), [worker])
    acceptor.update()
    reader, writer = await asyncio.open_connection("127.0.0.1", acceptor.port)
    await until(lambda: len(worker.got) == 1)
    served = worker.got[0]
    served.setblocking(True)
    writer.write(b"ping")
    await writer.drain()
    assert await asyncio.to_thread(served.recv, 4) == b"ping"
    assert served.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    served.sendall(b"pong")
    assert await reader.readexactly(4) == b"pong"
    acceptor.close()
    writer.close()
    worker.stop()


def test_a_taken_port_fails_the_bind() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError):
            listen(Address("127.0.0.1", taken.getsockname()[1]))
