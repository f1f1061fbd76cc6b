"""Slow and stalled callers against the HTTP front, over raw loopback sockets.

- 600 stalled uploads (headers announcing a 1 MB body, a few body bytes, then silence) and 400 slowloris
  connections (silent, a partial request line, headers without their end, headers trickled a byte at a
  time) held open at once do not stop legitimate calls on new connections from being answered; with
  short `--header-timeout` / `--body-timeout` the sidecar closes every one of them within its timeout.
- A caller that asks for a large answer and stops reading is cut after `--write-timeout`: its in-flight
  slot and its upstream request are released, the answer was not buffered (the upstream was paused), and
  other calls still work.
- An idle keep-alive connection is closed after `--keepalive-timeout`; a busy one, or one waiting for a
  slow answer, is not.
- `--max-buffered-request-bytes`: partial uploads beyond the budget get 503 REQUEST_LIMIT_EXCEEDED with
  Retry-After and are closed; small calls still pass and the uploads within it complete.
- `--max-connections`: connections beyond it are closed at once, the others keep working.

Timeouts here are hang guards and generous slack on a shared machine, never a measure of speed.
"""

from __future__ import annotations

import asyncio
import json
import resource
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field

import pytest

from proxy.app import Sidecar
from proxy.emulator import Emulator
from tests.integration import rawhttp
from tests.integration.conftest import (
    ECHO,
    SidecarFactory,
    echo_settings,
    eventually,
    invocations,
    upstream_settled,
)

PATH = "/serving-endpoints/fraud-ro/invocations"
ECHO_PATH = f"/serving-endpoints/{ECHO}/invocations"
BODY = b'{"inputs": [1]}'
STALLED_UPLOADS = 600
SLOWLORIS_EACH = 100  # of four kinds: 400
LEGITIMATE_CALLS = 20
SLACK = 8.0  # seconds beyond a timeout the sidecar may take to act on it, on a loaded 2-core machine
CALL_WITHIN = 10.0  # seconds for one legitimate call: a hang guard
FILE_DESCRIPTORS = 4096  # the caller's and the sidecar's ends of ~1000 connections, plus upstream and spare
QUIET = {"warm_connections": 0, "drain_timeout": 1}  # no warm-up invocations; a short stop


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    async with Emulator(echo_settings()) as emu:
        yield emu


@pytest.fixture(autouse=True)
def enough_file_descriptors() -> None:
    """The sidecar runs in this process: both ends of every connection count against one limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < FILE_DESCRIPTORS:
        ceiling = FILE_DESCRIPTORS if hard == resource.RLIM_INFINITY else min(FILE_DESCRIPTORS, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))
        soft = ceiling
    assert soft == resource.RLIM_INFINITY or soft >= FILE_DESCRIPTORS, (
        f"need {FILE_DESCRIPTORS} file descriptors, the hard limit is {hard}"
    )


# --- stalled connections ------------------------------------------------------------------------


@dataclass
class Stalls:
    """Stalled connections by kind, and the tasks trickling bytes into some of them."""

    connections: dict[str, list[rawhttp.Connection]] = field(default_factory=dict)
    trickles: list[asyncio.Task[None]] = field(default_factory=list)

    def all(self) -> Iterator[tuple[str, rawhttp.Connection]]:
        for kind, connections in self.connections.items():
            for connection in connections:
                yield kind, connection

    def close(self) -> None:
        for task in self.trickles:
            task.cancel()
        for _, (_, writer) in self.all():
            rawhttp.close(writer)


def upload_head(length: int, path: str = PATH) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


SLOW_HEAD = (
    f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n" + "".join(f"X-Slow-{i}: {'s' * 40}\r\n" for i in range(50))
).encode()
SLOWLORIS_STARTS = {
    "slowloris-silent": b"",
    "slowloris-partial-request-line": f"POST {PATH[:20]}".encode(),
    "slowloris-headers-without-end": SLOW_HEAD,
    "slowloris-trickled-headers": b"",  # then a byte every 0.5 s, never reaching the end of the headers
}


async def trickle(writer: asyncio.StreamWriter, data: bytes) -> None:
    for index in range(len(data)):
        writer.write(data[index : index + 1])
        try:
            await writer.drain()
        except ConnectionError:
            return
        await asyncio.sleep(0.5)


@asynccontextmanager
async def stalled(port: int) -> AsyncIterator[Stalls]:
    """600 stalled uploads and 400 slowloris connections, all open on return; closed on exit."""
    stalls = Stalls()
    opening = asyncio.Semaphore(100)  # stay well inside the listen backlog

    async def open_one(start: bytes) -> rawhttp.Connection:
        async with opening:
            connection = await rawhttp.open_connection(port)
        if start:
            connection[1].write(start)
            await connection[1].drain()
        return connection

    try:
        uploads = [open_one(upload_head(1_000_000) + b'{"inputs": ') for _ in range(STALLED_UPLOADS)]
        stalls.connections["stalled-upload"] = list(await asyncio.gather(*uploads))
        for kind, start in SLOWLORIS_STARTS.items():
            stalls.connections[kind] = list(await asyncio.gather(*(open_one(start) for _ in range(SLOWLORIS_EACH))))
        for _, writer in stalls.connections["slowloris-trickled-headers"]:
            stalls.trickles.append(asyncio.create_task(trickle(writer, SLOW_HEAD)))
        yield stalls
    finally:
        stalls.close()


async def legitimate_calls(port: int, count: int = LEGITIMATE_CALLS) -> list[tuple[int, bytes]]:
    """`count` calls at once, each on a new connection: (status, body) of each."""

    async def one(index: int) -> tuple[int, bytes]:
        connection = await rawhttp.open_connection(port)
        try:
            async with asyncio.timeout(CALL_WITHIN):
                answer = await rawhttp.exchange(connection, PATH, json.dumps({"inputs": [index]}).encode())
            return answer.status, answer.body
        except TimeoutError:
            return 0, f"no answer within {CALL_WITHIN} s".encode()
        except asyncio.IncompleteReadError:
            return 0, b"the connection ended without an answer"
        finally:
            rawhttp.close(connection[1])

    return list(await asyncio.gather(*(one(i) for i in range(count))))


def assert_all_answered(answers: list[tuple[int, bytes]]) -> None:
    wrong = [(i, status, body[:200]) for i, (status, body) in enumerate(answers) if status != 200]
    assert not wrong, f"{len(wrong)} of {len(answers)} legitimate calls failed, first: {wrong[:3]}"
    assert [json.loads(body) for _, body in answers] == [{"predictions": [i]} for i in range(len(answers))]


async def still_silent(stalls: Stalls, seconds: float) -> dict[str, int]:
    """Per kind, how many stalled connections received bytes or their end within `seconds`."""
    reads = {asyncio.create_task(reader.read(1)): kind for kind, (reader, _) in stalls.all()}
    done, pending = await asyncio.wait(reads, timeout=seconds)
    for task in pending:
        task.cancel()
    spoke: dict[str, int] = {}
    for task in done:
        spoke[reads[task]] = spoke.get(reads[task], 0) + 1
    return spoke


async def test_stalled_uploads_and_slowloris_do_not_stop_legitimate_calls(make_sidecar: SidecarFactory) -> None:
    # Long timeouts: the stalls stay open through the calls, so the calls really compete with them.
    async with make_sidecar(endpoint=["fraud-ro"], header_timeout=120, body_timeout=120, **QUIET) as sidecar:
        port = sidecar.port("http")
        async with stalled(port) as stalls:
            await asyncio.sleep(1.0)  # let the sidecar read what the stalls sent
            assert_all_answered(await legitimate_calls(port))
            spoke = await still_silent(stalls, 0.5)
            assert not spoke, f"stalled connections answered or closed although no timeout had passed: {spoke}"


async def test_stalled_connections_are_closed_within_the_timeouts(make_sidecar: SidecarFactory) -> None:
    async with make_sidecar(endpoint=["fraud-ro"], header_timeout=1, body_timeout=1, **QUIET) as sidecar:
        port = sidecar.port("http")
        async with stalled(port) as stalls:
            deadline = time.monotonic() + 1 + SLACK  # every stall began before this moment
            assert_all_answered(await legitimate_calls(port))
            ends = await asyncio.gather(*(closing(reader, deadline) for _, (reader, _) in stalls.all()))
            left_open: dict[str, int] = {}
            for (kind, _), end in zip(stalls.all(), ends, strict=True):
                if end != "closed":
                    left_open[f"{kind}: {end}"] = left_open.get(f"{kind}: {end}", 0) + 1
            assert not left_open, f"not closed within the timeout + {SLACK} s slack: {left_open}"
        assert_all_answered(await legitimate_calls(port))
        await no_request_in_flight(sidecar)


async def closing(reader: asyncio.StreamReader, deadline: float) -> str:
    """'closed' if the connection ends by `deadline` (after at most an error answer), else what happened."""
    try:
        received = await rawhttp.read_until_closed(reader, max(0.1, deadline - time.monotonic()), limit=1 << 16)
    except TimeoutError:
        return "open"
    if received and not received.startswith((b"HTTP/1.1 4", b"HTTP/1.1 5", b"HTTP/1.0 4", b"HTTP/1.0 5")):
        return f"answered {received[:12]!r}"
    return "closed"


IN_FLIGHT = 'serving_sidecar_in_flight_requests{front="http"}'


async def in_flight(admin_port: int) -> float:
    """The in-flight gauge of the HTTP front, scraped from the admin listener's /metrics."""
    reader, writer = await rawhttp.open_connection(admin_port)
    try:
        writer.write(rawhttp.request("/metrics", method="GET", headers=()))
        async with asyncio.timeout(CALL_WITHIN):
            answer = await rawhttp.read_response(reader)
    finally:
        rawhttp.close(writer)
    for line in answer.body.decode().splitlines():
        if line.startswith(IN_FLIGHT + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{IN_FLIGHT} is not exported")


async def no_request_in_flight(sidecar: Sidecar, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while (value := await in_flight(sidecar.port("admin"))) != 0:
        assert time.monotonic() < deadline, f"{IN_FLIGHT} is still {value} after {seconds} s"
        await asyncio.sleep(0.05)


# --- a caller that stops reading ----------------------------------------------------------------

LARGE_ANSWER = 256 * 1024 * 1024
BOUND = 64 * 1024 * 1024  # what may have left the upstream, or been allocated, while the caller did not read


@contextmanager
def traced_peak() -> Iterator[Callable[[], int]]:
    """Python allocations in this process (sidecar and emulator alike): a function giving the peak so far."""
    tracemalloc.start()
    try:
        yield lambda: tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


async def test_a_caller_that_stops_reading_is_cut_after_the_write_timeout(
    emu: Emulator, make_sidecar: SidecarFactory
) -> None:
    async with make_sidecar(endpoint=["fraud-ro"], write_timeout=1, max_in_flight_per_endpoint=1, **QUIET) as sidecar:
        emu.faults.answer_bytes["fraud-ro"] = LARGE_ANSWER
        reader, writer = await rawhttp.open_connection(sidecar.port("http"), receive_buffer=4096)
        try:
            with traced_peak() as peak:
                writer.write(rawhttp.request(PATH, BODY))  # and never read
                await eventually(lambda: emu.counters.answer_bytes_sent > 0, 10, "the large answer started")
                await eventually(
                    lambda: emu.counters.invocations_in_flight == 0,
                    1 + SLACK,
                    "the upstream request released after the write timeout",
                )
                allocated = peak()
            sent = emu.counters.answer_bytes_sent
            assert sent < BOUND, f"the upstream sent {sent} bytes to a caller that read nothing: not paused"
            assert allocated < BOUND, f"{allocated} bytes allocated at the peak: the answer was buffered"
            await no_request_in_flight(sidecar)
            try:
                await rawhttp.read_until_closed(reader, CALL_WITHIN, limit=BOUND)
            except TimeoutError:
                raise AssertionError("the caller's connection is still open") from None
        finally:
            rawhttp.close(writer)
        emu.faults.answer_bytes.clear()
        connection = await rawhttp.open_connection(sidecar.port("http"))
        try:
            answer = await rawhttp.exchange(connection, PATH, BODY)  # 503 if the slot had leaked (limit 1)
        finally:
            rawhttp.close(connection[1])
        assert (answer.status, answer.json()) == (200, {"predictions": [1]})


# --- keep-alive ---------------------------------------------------------------------------------


async def test_an_idle_keep_alive_connection_is_closed_after_the_keepalive_timeout(
    emu: Emulator, make_sidecar: SidecarFactory
) -> None:
    emu.faults.latency["features-ro"] = 2.5  # an answer slower than the keep-alive timeout
    async with make_sidecar(endpoint=["fraud-ro", "features-ro"], keepalive_timeout=1, **QUIET) as sidecar:
        port = sidecar.port("http")
        idle, busy, waiting = [await rawhttp.open_connection(port) for _ in range(3)]
        try:
            assert (await rawhttp.exchange(idle, PATH, BODY)).status == 200

            async def keep_busy() -> list[int]:
                statuses = []
                for _ in range(25):  # 2.5 s of calls 0.1 s apart: never idle for the timeout
                    statuses.append((await rawhttp.exchange(busy, PATH, BODY)).status)
                    await asyncio.sleep(0.1)
                return statuses

            slow_body = b'{"dataframe_records": [{"a": 1}]}'
            slow_path = "/serving-endpoints/features-ro/invocations"
            statuses, slow = await asyncio.gather(keep_busy(), rawhttp.exchange(waiting, slow_path, slow_body))
            assert statuses == [200] * 25, "a busy keep-alive connection was closed"
            assert slow.status == 200, "a connection waiting for its answer was closed"
            try:
                assert await rawhttp.read_until_closed(idle[0], 1 + SLACK) == b""
            except TimeoutError:
                raise AssertionError(f"an idle keep-alive connection is still open after 1 + {SLACK} s") from None
        finally:
            for _, writer in (idle, busy, waiting):
                rawhttp.close(writer)


# --- buffered request bytes ---------------------------------------------------------------------

BUDGET = 1024 * 1024 + 64 * 1024  # four partial uploads fit, with room for small calls
UPLOADS = 8
UPLOAD_LENGTH = 512 * 1024
UPLOAD_SENT = 256 * 1024  # half of each body, then a stall


async def test_partial_uploads_beyond_the_buffered_bytes_budget_get_503(
    emu: Emulator, make_sidecar: SidecarFactory
) -> None:
    async with make_sidecar(endpoint=[ECHO], max_buffered_request_bytes=BUDGET, **QUIET) as sidecar:
        port = sidecar.port("http")
        bodies = [bytes([65 + i]) * UPLOAD_LENGTH for i in range(UPLOADS)]
        uploads = [await rawhttp.open_connection(port) for _ in range(UPLOADS)]
        reads: list[asyncio.Task[rawhttp.Response]] = []
        refused: list[int] = []
        finishing: list[int] = []
        try:
            for (_, writer), body in zip(uploads, bodies, strict=True):
                writer.write(upload_head(UPLOAD_LENGTH, ECHO_PATH) + body[:UPLOAD_SENT])
                await writer.drain()
            # Whether a budget counts bytes received (4 fit) or lengths announced (2 fit), at least 4 are over it.
            reads = [asyncio.create_task(rawhttp.read_response(reader)) for reader, _ in uploads]
            await eventually(lambda: sum(task.done() for task in reads) >= UPLOADS - 4, CALL_WITHIN, "503s")
            await asyncio.sleep(0.3)  # any further refusal arrives too
            refused = [i for i, task in enumerate(reads) if task.done()]
            for i in refused:
                answer = reads[i].result()
                assert answer.status == 503, (answer.status, answer.body[:200])
                assert answer.json()["error_code"] == "REQUEST_LIMIT_EXCEEDED", answer.body[:200]
                assert answer.header("Retry-After") is not None, answer.headers
                assert await rawhttp.read_until_closed(uploads[i][0], CALL_WITHIN) == b""
            for i in range(3):  # small calls still pass
                connection = await rawhttp.open_connection(port)
                try:
                    answer = await rawhttp.exchange(connection, ECHO_PATH, b"small %d" % i)
                finally:
                    rawhttp.close(connection[1])
                assert (answer.status, answer.body) == (200, b"small %d" % i)
            # The budget counts bytes received: callers that give up free theirs, and the rest can complete.
            admitted = sorted(set(range(UPLOADS)) - set(refused))
            finishing, abandoned = admitted[:2], admitted[2:]
            for i in abandoned:
                rawhttp.close(uploads[i][1])
            await eventually(
                lambda: sidecar.http_front.buffered <= len(finishing) * UPLOAD_SENT, CALL_WITHIN, "bytes freed"
            )
            for i in finishing:
                uploads[i][1].write(bodies[i][UPLOAD_SENT:])
                async with asyncio.timeout(CALL_WITHIN):
                    answer = await reads[i]
                assert answer.status == 200, (answer.status, answer.body[:200])
                assert answer.body == bodies[i], "the upstream got another body than the upload's"
        finally:
            for task in reads:
                task.cancel()
            for _, writer in uploads:
                rawhttp.close(writer)
        await upstream_settled(emu)
        assert invocations(emu)[ECHO] == {"200": 3 + len(finishing)}, "a refused or abandoned upload was forwarded"


# --- connection count ---------------------------------------------------------------------------

MAX_CONNECTIONS = 16


async def test_connections_beyond_max_connections_are_closed_at_once(make_sidecar: SidecarFactory) -> None:
    async with make_sidecar(endpoint=["fraud-ro"], max_connections=MAX_CONNECTIONS, **QUIET) as sidecar:
        port = sidecar.port("http")
        held = [await rawhttp.open_connection(port) for _ in range(MAX_CONNECTIONS)]
        extra: list[rawhttp.Connection] = []
        try:
            await all_answer(held)
            extra = [await rawhttp.open_connection(port) for _ in range(4)]
            for reader, _ in extra:
                try:
                    received = await rawhttp.read_until_closed(reader, 5.0)
                except TimeoutError:
                    raise AssertionError(f"a connection beyond {MAX_CONNECTIONS} is still open") from None
                assert received == b"" or received.startswith(b"HTTP/1.1 503"), received[:200]
            await all_answer(held)  # the held ones keep working
            for _, writer in held[:4]:
                writer.close()
            await eventually_served(port)  # their places are free again
        finally:
            for _, writer in held + extra:
                rawhttp.close(writer)


async def all_answer(connections: list[rawhttp.Connection]) -> None:
    async with asyncio.timeout(CALL_WITHIN):
        answers = await asyncio.gather(*(rawhttp.exchange(c, PATH, BODY) for c in connections))
    assert [a.status for a in answers] == [200] * len(connections)


async def eventually_served(port: int) -> None:
    """A new connection is served once the sidecar has seen closed ones go (it may take a moment)."""
    deadline = time.monotonic() + CALL_WITHIN
    while (answer := await call_on_new_connection(port)) is None or answer.status != 200:
        assert time.monotonic() < deadline, "no new connection served after others closed"
        await asyncio.sleep(0.1)


async def call_on_new_connection(port: int) -> rawhttp.Response | None:
    """One call on a new connection; None if the connection ends without an answer."""
    connection = await rawhttp.open_connection(port)
    try:
        async with asyncio.timeout(CALL_WITHIN):
            return await rawhttp.exchange(connection, PATH, BODY)
    except asyncio.IncompleteReadError:
        return None
    finally:
        rawhttp.close(connection[1])
