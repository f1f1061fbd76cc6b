"""Request framing, property-tested with hypothesis over raw sockets, differentially against aiohttp's parser.

1. Differential: generated framings (valid Content-Length and chunked requests, pipelined, mutated: header
   name case, odd whitespace, duplicate, missing or conflicting framing headers, bad Content-Length values,
   bad chunk sizes, missing CRLFs, bare LFs) go both to aiohttp's pure-Python request parser
   (`HttpRequestParserPy`, strict request mode, used on its own as aiohttp's tests do) and to the sidecar.
   For every message aiohttp completes, the sidecar either forwards it, and the `echo` endpoint's answer
   shows the upstream got exactly aiohttp's body, or refuses it with a 4xx and closes (being stricter is
   allowed). Where aiohttp refuses the bytes, the sidecar answers 4xx and forwards nothing of that
   message. Nothing is forwarded that aiohttp did not complete.
2. Valid requests, split at random points over several writes and pipelined on one connection, are all
   answered 200, in order, each with its own body.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any
from unittest import mock

import pytest
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_parser import HttpRequestParserPy
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from proxy.app import Sidecar
from proxy.emulator import Emulator
from tests.integration import rawhttp
from tests.integration.conftest import ECHO, SidecarFactory, echo_settings, invocations, upstream_settled

ECHO_PATH = f"/serving-endpoints/{ECHO}/invocations"
ANSWER_WITHIN = 5.0  # seconds for an answer that is due (loopback, a local echo): a hang guard
SETTLE = 0.3  # seconds of silence taken as "nothing more is coming" where nothing may come
# Bounded: 50 examples, no shrinking (a failing example waits out its timeouts, so shrinking one would take
# minutes; the generated requests are small already), stop at the first failure.
PROPERTY_SETTINGS = settings(
    max_examples=50,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    async with Emulator(echo_settings()) as emu:
        yield emu


@pytest.fixture
async def sidecar(make_sidecar: SidecarFactory) -> AsyncIterator[Sidecar]:
    # No warm-up requests (they would count as invocations at an unknown moment); a short stop for a stuck front.
    async with make_sidecar(endpoint=[ECHO], warm_connections=0, drain_timeout=1) as started:
        yield started


# --- what aiohttp makes of the bytes ------------------------------------------------------------


@dataclass(frozen=True)
class Reading:
    """aiohttp's reading: bodies of the messages it completed, in order, and how the bytes end."""

    bodies: tuple[bytes, ...]
    # "refused" (malformed), "closed" (the last message ends the connection), "done" (every byte belongs to
    # a complete message) or "waiting" (for the rest of a message)
    ending: str


def aiohttp_reading(data: bytes) -> Reading:
    """Feed `data` byte by byte to aiohttp's pure-Python request parser (limits above the sidecar's)."""
    parser = HttpRequestParserPy(
        mock.Mock(),
        asyncio.get_running_loop(),
        2**20,
        max_line_size=1 << 17,
        max_field_size=1 << 17,
        max_headers=1000,
        auto_decompress=False,
    )
    pending: list[tuple[bool, Any]] = []  # (should_close, its body's StreamReader)
    refused = False
    consumed = 0  # bytes up to the end of the last complete message
    for index in range(len(data)):
        try:
            messages, _, _ = parser.feed_data(data[index : index + 1])
        except HttpProcessingError:
            refused = True
            break
        pending += [(message.should_close, payload) for message, payload in messages]
        if pending and all(payload.is_eof() or payload.exception() for _, payload in pending):
            consumed = index + 1
    bodies: list[bytes] = []
    closes = False
    for should_close, payload in pending:
        if payload.exception() is not None:
            refused = True
            break
        if not payload.is_eof():
            break
        bodies.append(payload.read_nowait())
        if should_close:
            closes = True
            break
    ending = "closed" if closes else "refused" if refused else "done" if consumed == len(data) else "waiting"
    return Reading(tuple(bodies), ending)


# --- generated framings -------------------------------------------------------------------------

NAME_CASES: list[Callable[[str], str]] = [str, str.lower, str.upper, str.swapcase]
# One of these at most per request; the rest of each request is valid (with harmless variety).
MUTATIONS = [
    *("duplicate-length", "other-length", "drop-length", "add-chunked", "odd-length"),
    *("add-length", "duplicate-te", "drop-te", "odd-te"),
    *("drop-host", "duplicate-host", "space-before-colon", "bare-lf", "http-1.0"),
    *("bad-chunk-size", "chunk-without-crlf", "bad-last-chunk"),
]
ODD_LENGTHS = ["+{n}", "-{n}", "0{n}", "{n}, {n}", "abc", "{m}", "0x{n}"]  # {m}: one more than the body
ODD_TES = ["Chunked", "CHUNKED", "chunked, chunked", "gzip, chunked", "chunked, gzip", "identity", "chunked;q=1"]


def pieces_of(draw: st.DrawFn, body: bytes) -> list[bytes]:
    cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=4)))
    return [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True) if b > a]


def chunk_encoding(draw: st.DrawFn, body: bytes, mutation: str) -> bytes:
    """`body` in chunked framing with random chunk sizes, hex spellings, extensions and trailers; one chunk
    size, chunk end or last chunk broken when `mutation` says so."""
    pieces = pieces_of(draw, body)
    broken = draw(st.integers(0, max(0, len(pieces) - 1)))
    out = []
    for index, piece in enumerate(pieces):
        size = draw(st.sampled_from(["{:x}", "{:X}", "00{:x}", "{:x};ext=1", '{:x};a="b c"'])).format(len(piece))
        end = b"\r\n"
        if index == broken and mutation == "bad-chunk-size":
            size = draw(st.sampled_from(["zz", "-{:x}", "f" * 17, "0x{:x}", "{:x} ", " {:x}", "{:x}\t"]))
            size = size.format(len(piece))
        if index == broken and mutation == "chunk-without-crlf":
            end = draw(st.sampled_from([b"", b"\n", b"\r", b"\r\r\n"]))
        out.append(size.encode() + b"\r\n" + piece + end)
    last = draw(st.sampled_from([b"0\r\n\r\n", b"0\r\nX-Trailer: 1\r\n\r\n", b"000;x\r\n\r\n"]))
    if mutation == "bad-last-chunk":
        last = draw(st.sampled_from([b"0\r\n", b"0\n\n", b"0\r\nX-Trailer 1\r\n\r\n", b"0\r\n\r"]))
    return b"".join(out) + last


@st.composite
def framed_request(draw: st.DrawFn) -> bytes:
    """One request to the echo endpoint, framed by Content-Length or chunked, valid or with one mutation."""
    body = draw(st.binary(max_size=48))
    mutation = draw(st.sampled_from(["none"] * (2 * len(MUTATIONS)) + MUTATIONS))  # a third mutated
    chunked = draw(st.booleans())
    length = str(len(body))
    headers = [("Host", "127.0.0.1"), ("Content-Type", "application/octet-stream")]
    if chunked:
        te = draw(st.sampled_from(ODD_TES)) if mutation == "odd-te" else "chunked"
        headers.append(("Transfer-Encoding", te))
    else:
        odd = draw(st.sampled_from(ODD_LENGTHS)).format(n=length, m=len(body) + 1)
        headers.append(("Content-Length", odd if mutation == "odd-length" else length))
    headers = list(draw(st.permutations(_mutated(headers, mutation, length))))
    version = "HTTP/1.0" if mutation == "http-1.0" else "HTTP/1.1"
    lines = [f"POST {ECHO_PATH} {version}"]
    for name, value in headers:
        case = draw(st.sampled_from(NAME_CASES))
        before = draw(st.sampled_from(["", " ", " ", "\t", "  "]))
        after = draw(st.sampled_from(["", "", " ", "\t"]))
        colon = " :" if mutation == "space-before-colon" and name == "Content-Type" else ":"
        lines.append(f"{case(name)}{colon}{before}{value}{after}")
    separators = ["\r\n"] * len(lines)
    if mutation == "bare-lf":
        separators[draw(st.integers(0, len(lines) - 1))] = "\n"
    head = "".join(line + sep for line, sep in zip(lines, separators, strict=True)) + "\r\n"
    return head.encode("latin-1") + (chunk_encoding(draw, body, mutation) if chunked else body)


def _mutated(headers: list[tuple[str, str]], mutation: str, length: str) -> list[tuple[str, str]]:
    names = [name for name, _ in headers]
    if mutation == "duplicate-length" and "Content-Length" in names:
        return [*headers, ("Content-Length", dict(headers)["Content-Length"])]
    if mutation == "other-length" and "Content-Length" in names:
        return [*headers, ("Content-Length", str(int(length) + 2))]
    if mutation in ("drop-length", "drop-host", "drop-te"):
        dropped = {"drop-length": "Content-Length", "drop-host": "Host", "drop-te": "Transfer-Encoding"}[mutation]
        return [(name, value) for name, value in headers if name != dropped]
    if mutation == "duplicate-host":
        return [*headers, ("Host", "127.0.0.1")]
    if mutation == "add-chunked" and "Transfer-Encoding" not in names:
        return [*headers, ("Transfer-Encoding", "chunked")]
    if mutation == "add-length":
        return [*headers, ("Content-Length", length)]
    if mutation == "duplicate-te" and "Transfer-Encoding" in names:
        return [*headers, ("Transfer-Encoding", "chunked")]
    return headers


def split_points(data: bytes) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(1, max(1, len(data) - 1)), max_size=6, unique=True).map(sorted)


async def send_in_pieces(writer: asyncio.StreamWriter, data: bytes, cuts: list[int]) -> None:
    """`data` in several writes, cut at `cuts`, each given a moment to leave as its own segment; stops
    quietly where the sidecar has already closed the connection (it refused what it had read)."""
    for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True):
        if start < end:
            if writer.is_closing():
                return
            writer.write(data[start:end])
            try:
                await writer.drain()
            except ConnectionError:
                return
            await asyncio.sleep(0.002)


# --- the properties -----------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(data=st.data())
async def test_sidecar_refuses_what_aiohttp_refuses_and_forwards_only_aiohttp_s_bodies(
    emu: Emulator, sidecar: Sidecar, data: st.DataObject
) -> None:
    requests = data.draw(st.lists(framed_request(), min_size=1, max_size=3), label="requests")
    wire = b"".join(requests)
    cuts = data.draw(split_points(wire), label="cuts")
    expected = aiohttp_reading(wire)
    event(f"aiohttp: {expected.ending} after {len(expected.bodies)} of {len(requests)}")
    before = sum(invocations(emu).get(ECHO, {}).values())
    reader, writer = await rawhttp.open_connection(sidecar.port("http"))
    try:
        await send_in_pieces(writer, wire, cuts)
        forwarded = await check_answers(reader, expected)
    finally:
        rawhttp.close(writer)
    await upstream_settled(emu)
    assert sum(invocations(emu).get(ECHO, {}).values()) - before == forwarded, "forwarded without an answer seen"


async def check_answers(reader: asyncio.StreamReader, expected: Reading) -> int:
    """Check the sidecar's answers against aiohttp's reading; the number of requests it forwarded."""
    for index, body in enumerate(expected.bodies):
        answer = await _answer(reader, f"message {index} (aiohttp completed it)")
        if answer.status == 200:
            assert answer.body == body, f"message {index}: upstream got {answer.body!r}, aiohttp read {body!r}"
            continue
        await _refused_and_closed(reader, answer, f"message {index}")
        return index  # stricter than aiohttp: allowed, if it is a clear 4xx and the end
    if expected.ending == "refused":
        answer = await _answer(reader, "the bytes aiohttp refused after the complete messages")
        await _refused_and_closed(reader, answer, "the bytes aiohttp refused")
    elif expected.ending == "closed":
        await _closed(reader, "the answer to a message that ends the connection")
    elif expected.ending == "waiting":
        await _nothing_or_refusal(reader)
    return len(expected.bodies)


async def _answer(reader: asyncio.StreamReader, what: str) -> rawhttp.Response:
    try:
        async with asyncio.timeout(ANSWER_WITHIN):
            return await rawhttp.read_response(reader)
    except TimeoutError:
        raise AssertionError(f"{what}: no answer within {ANSWER_WITHIN} s") from None
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        raise AssertionError(f"{what}: the connection ended without an answer ({type(exc).__name__})") from None


async def _refused_and_closed(reader: asyncio.StreamReader, answer: rawhttp.Response, what: str) -> None:
    assert 400 <= answer.status < 500, f"{what}: answered {answer.status} {answer.body[:200]!r}, expected 4xx"
    await _closed(reader, f"the {answer.status} to {what}")


async def _closed(reader: asyncio.StreamReader, after: str) -> None:
    try:
        rest = await rawhttp.read_until_closed(reader, ANSWER_WITHIN)
    except TimeoutError:
        raise AssertionError(f"still open {ANSWER_WITHIN} s after {after}") from None
    assert rest == b"", f"bytes after {after}: {rest[:200]!r}"


async def _nothing_or_refusal(reader: asyncio.StreamReader) -> None:
    """aiohttp waits for more bytes: the sidecar may wait too, or refuse; it must not answer 2xx."""
    try:
        async with asyncio.timeout(SETTLE):
            first = await reader.read(1)
    except (TimeoutError, ConnectionError):
        return  # silence (it waits for the rest, as aiohttp does), or a reset
    if not first:
        return  # it closed
    async with asyncio.timeout(ANSWER_WITHIN):
        head = first + await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert 400 <= status < 500, f"answered {status} to bytes aiohttp still waits on: {head[:200]!r}"


@st.composite
def valid_request(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """(request bytes, body): Content-Length or chunked framing, header names in any case."""
    body = draw(st.binary(max_size=2048))
    case = draw(st.sampled_from(NAME_CASES))
    headers = [(case("Content-Type"), "application/octet-stream"), (case("X-Request-Id"), "framing-test")]
    if draw(st.booleans()):
        cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=5)))
        chunks = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
        return rawhttp.request(ECHO_PATH, headers=headers, chunks=chunks), body
    return rawhttp.request(ECHO_PATH, body, headers=headers), body


@PROPERTY_SETTINGS
@given(data=st.data())
async def test_valid_requests_split_and_pipelined_are_answered_in_order(
    emu: Emulator, sidecar: Sidecar, data: st.DataObject
) -> None:
    requests = data.draw(st.lists(valid_request(), min_size=1, max_size=5), label="requests")
    wire = b"".join(raw for raw, _ in requests)
    assert aiohttp_reading(wire) == Reading(tuple(body for _, body in requests), "done")  # the oracle agrees
    cuts = data.draw(split_points(wire), label="cuts")
    reader, writer = await rawhttp.open_connection(sidecar.port("http"))
    try:
        await send_in_pieces(writer, wire, cuts)
        async with asyncio.timeout(ANSWER_WITHIN):
            answers = [await rawhttp.read_response(reader) for _ in requests]
    finally:
        rawhttp.close(writer)
    assert [(a.status, a.body) for a in answers] == [(200, body) for _, body in requests]
