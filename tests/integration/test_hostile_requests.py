"""The HTTP front's parser against hostile and odd requests, over raw loopback sockets.

Every hostile request goes on a fresh connection and must get a 4xx answer (a Databricks-shaped JSON
error, `BAD_REQUEST` for a 400), then the connection must close, and nothing may reach the upstream
(the emulator's invocation counters do not move). These are the request-smuggling shapes (a body framed
two ways, or framed so that two parsers could disagree), malformed request lines and header lines, and
requests over the header limits. Odd but valid shapes must still be answered: lowercase chunked framing
with chunk extensions, trailers, `Expect: 100-continue`, HTTP/1.0, pipelining, empty bodies.

Nothing here depends on how the front is built: only bytes on a socket and the emulator's counters.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from proxy.emulator import Emulator
from tests.integration import rawhttp
from tests.integration.conftest import ECHO, SidecarFactory, echo_settings, invocations, upstream_settled

PATH = "/serving-endpoints/fraud-ro/invocations"
ECHO_PATH = f"/serving-endpoints/{ECHO}/invocations"
BODY = b'{"inputs": [1]}'  # 15 bytes, 0xf
CHUNKED_BODY = b"f\r\n" + BODY + b"\r\n0\r\n\r\n"
ANSWER_WITHIN = 5.0  # seconds for a local answer that is due: hang guards, not timing assertions
DEFAULT_MAX_HEADERS = 100
DEFAULT_MAX_HEADER_BYTES = 65536
# No warm-up requests (they would count as invocations at an unknown moment); a short stop for a stuck front.
QUIET = {"warm_connections": 0, "drain_timeout": 1}


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    async with Emulator(echo_settings()) as emu:
        yield emu


def head(*lines: str, start: str = f"POST {PATH} HTTP/1.1") -> bytes:
    """A request line, Host and Content-Type, then `lines`, then the empty line (latin-1, byte for byte)."""
    return "\r\n".join([start, "Host: 127.0.0.1", "Content-Type: application/json", *lines, "", ""]).encode("latin-1")


def padding_headers(count: int, size: int) -> list[str]:
    """`count` header lines of exactly `size` bytes each (CRLF not counted)."""
    return [f"X-Pad-{i:03d}: ".ljust(size, "p") for i in range(count)]


def many_headers(total: int) -> bytes:
    """A valid request with exactly `total` header lines (Host, Content-Type and Content-Length included)."""
    return head(*padding_headers(total - 3, 16), f"Content-Length: {len(BODY)}") + BODY


def sized_head(head_bytes: int) -> bytes:
    """A valid request whose line and headers, final empty line included, are exactly `head_bytes` long."""
    base = head(f"Content-Length: {len(BODY)}")
    missing = head_bytes - len(base)
    lines = padding_headers(missing // 4002, 4000)  # 4000 bytes + CRLF each, well under any per-line limit
    rest = missing - 4002 * len(lines)
    if rest:
        assert rest >= 12, "pad differently"
        lines.append("X-Rest: ".ljust(rest - 2, "r"))
    data = head(*lines, f"Content-Length: {len(BODY)}")
    assert len(data) == head_bytes, (len(data), head_bytes)
    return data + BODY


def oversized_headers(limit: int) -> bytes:
    """A request whose header lines alone (request line not counted) are over `limit` bytes."""
    lines = padding_headers(limit // 4000 + 1, 4000)
    return head(*lines, f"Content-Length: {len(BODY)}") + BODY


def long_request_line(limit: int) -> bytes:
    return head(f"Content-Length: {len(BODY)}", start=f"POST {PATH}?q={'a' * limit} HTTP/1.1") + BODY


CL = f"Content-Length: {len(BODY)}"
TE = "Transfer-Encoding: chunked"

HOSTILE: dict[str, bytes] = {
    # a body framed two ways
    "content-length-then-chunked": head(CL, TE) + CHUNKED_BODY,
    "chunked-then-content-length": head(TE, CL) + CHUNKED_BODY,
    "content-length-and-chunked-smuggling-a-request": head("Content-Length: 5", TE)
    + b"0\r\n\r\n"
    + rawhttp.request(PATH, BODY),
    # Content-Length
    "duplicate-content-length-same-value": head(CL, CL) + BODY,
    "duplicate-content-length-different-values": head(CL, "Content-Length: 16") + BODY + b" ",
    "content-length-negative": head("Content-Length: -15") + BODY,
    "content-length-not-digits": head("Content-Length: abc") + BODY,
    "content-length-with-plus-sign": head("Content-Length: +15") + BODY,
    "content-length-hex": head("Content-Length: 0xf") + BODY,
    "content-length-space-inside": head("Content-Length: 1 5") + BODY,
    "content-length-huge": head("Content-Length: 99999999999999999999999999") + BODY,
    # Transfer-Encoding other than exactly chunked
    "transfer-encoding-gzip": head("Transfer-Encoding: gzip") + BODY,
    "transfer-encoding-identity": head("Transfer-Encoding: identity") + BODY,
    "transfer-encoding-chunked-gzip": head("Transfer-Encoding: chunked, gzip") + CHUNKED_BODY,
    "transfer-encoding-gzip-chunked": head("Transfer-Encoding: gzip, chunked") + CHUNKED_BODY,
    "transfer-encoding-chunked-twice": head("Transfer-Encoding: chunked, chunked") + CHUNKED_BODY,
    "transfer-encoding-two-lines": head(TE, "Transfer-Encoding: identity") + CHUNKED_BODY,
    "transfer-encoding-chunked-on-two-lines": head(TE, TE) + CHUNKED_BODY,  # chunked applied twice
    "transfer-encoding-chunked-on-two-lines-with-tabs": head(
        "TRANSFER-ENCODING:\tchunked\t", "Transfer-Encoding:chunked"
    )
    + CHUNKED_BODY,  # found by the differential test: llhttp takes it, aiohttp refuses it
    "transfer-encoding-unknown-token": head("Transfer-Encoding: xchunked") + CHUNKED_BODY,
    # chunk sizes
    "chunk-size-not-hex": head(TE) + b"zz\r\n" + BODY + b"\r\n0\r\n\r\n",
    "chunk-size-negative": head(TE) + b"-f\r\n" + BODY + b"\r\n0\r\n\r\n",
    "chunk-size-overflowing": head(TE) + b"1" + b"0" * 20 + b"\r\n" + BODY + b"\r\n0\r\n\r\n",
    "chunk-size-with-0x": head(TE) + b"0xf\r\n" + BODY + b"\r\n0\r\n\r\n",
    "chunk-size-empty": head(TE) + b"\r\n" + BODY + b"\r\n0\r\n\r\n",
    "chunk-data-without-crlf": head(TE) + b"f\r\n" + BODY + b"0\r\n\r\n",
    "chunk-data-longer-than-its-size": head(TE) + b"5\r\n" + BODY + b"\r\n0\r\n\r\n",
    # obs-fold
    "obs-fold-space": head("X-Folded: a", " b", CL) + BODY,
    "obs-fold-tab": head("X-Folded: a", "\tb", CL) + BODY,
    "obs-fold-first-header-line": f"POST {PATH} HTTP/1.1\r\n Host: 127.0.0.1\r\n{CL}\r\n\r\n".encode() + BODY,
    # request line
    "missing-http-version": head(CL, start=f"POST {PATH}") + BODY,
    "http-0.9-style": f"GET {PATH}\r\n".encode(),
    "http-2.0": head(CL, start=f"POST {PATH} HTTP/2.0") + BODY,
    "http-1.2": head(CL, start=f"POST {PATH} HTTP/1.2") + BODY,
    "http-version-lowercase": head(CL, start=f"POST {PATH} http/1.1") + BODY,
    "http-version-without-dot": head(CL, start=f"POST {PATH} HTTP/11") + BODY,
    # header names and values
    "header-name-with-space": head("X Name: v", CL) + BODY,
    "header-name-space-before-colon": head("X-Name : v", CL) + BODY,
    "header-name-with-control-char": head("X-\x01Name: v", CL) + BODY,
    "header-name-with-nul": head("X-\x00Name: v", CL) + BODY,
    "header-name-empty": head(": v", CL) + BODY,
    "header-value-with-nul": head("X-Value: a\x00b", CL) + BODY,
    "header-value-with-cr": head("X-Value: a\rb", CL) + BODY,
    # limits (defaults)
    "more-than-max-headers": many_headers(DEFAULT_MAX_HEADERS + 1),
    "headers-over-max-header-bytes": oversized_headers(DEFAULT_MAX_HEADER_BYTES),
    "request-line-over-max-header-bytes": long_request_line(DEFAULT_MAX_HEADER_BYTES),
}
LIMIT_STATUSES = {
    "more-than-max-headers": {400, 431},
    "headers-over-max-header-bytes": {400, 431},
    "request-line-over-max-header-bytes": {400, 414, 431},
}


async def refusal(port: int, data: bytes, *, body_later: bool = False) -> rawhttp.Response:
    """Send `data` on a fresh connection: the answer, which must be a 4xx followed by the connection's end.
    With `body_later`, the line and headers go first and the rest a moment later, in a second segment."""
    reader, writer = await rawhttp.open_connection(port)
    try:
        if body_later:
            end = data.index(b"\r\n\r\n") + 4
            writer.write(data[:end])
            await asyncio.sleep(0.2)
            data = data[end:]
        writer.write(data)
        try:
            async with asyncio.timeout(ANSWER_WITHIN):
                answer = await rawhttp.read_response(reader)
        except TimeoutError:
            raise AssertionError(f"no answer within {ANSWER_WITHIN} s") from None
        except asyncio.IncompleteReadError as exc:
            raise AssertionError(f"the connection ended without an answer (after {exc.partial[:100]!r})") from None
        assert 400 <= answer.status < 500, (answer.status, answer.body[:300])
        try:
            after = await rawhttp.read_until_closed(reader, ANSWER_WITHIN)
        except TimeoutError:
            raise AssertionError(f"connection still open {ANSWER_WITHIN} s after the {answer.status}") from None
        assert after == b"", f"more bytes after the {answer.status}: {after[:300]!r}"
        return answer
    finally:
        rawhttp.close(writer)


def assert_databricks_error(answer: rawhttp.Response) -> None:
    assert (answer.header("Content-Type") or "").startswith("application/json"), answer.headers
    error = answer.json()
    assert isinstance(error.get("error_code"), str) and error["error_code"], error
    assert isinstance(error.get("message"), str) and error["message"], error
    if answer.status == 400:
        assert error["error_code"] == "BAD_REQUEST", error


@pytest.mark.parametrize("name", HOSTILE)
async def test_hostile_request_is_refused_closed_and_never_forwarded(
    emu: Emulator, make_sidecar: SidecarFactory, name: str
) -> None:
    async with make_sidecar(endpoint=["fraud-ro"], **QUIET) as sidecar:
        before = invocations(emu)
        answer = await refusal(sidecar.port("http"), HOSTILE[name])
        await upstream_settled(emu)
        assert invocations(emu) == before, "the request (or part of it) reached the upstream"
        assert answer.status in LIMIT_STATUSES.get(name, range(400, 500)), answer.status
        assert_databricks_error(answer)
        # the sidecar keeps serving
        connection = await rawhttp.open_connection(sidecar.port("http"))
        try:
            assert (await rawhttp.exchange(connection, PATH, BODY)).status == 200
        finally:
            rawhttp.close(connection[1])


BAD_BODIES = [name for name in HOSTILE if name.startswith("chunk-")]


@pytest.mark.parametrize("name", BAD_BODIES)
async def test_bad_chunk_arriving_after_the_headers_is_refused_closed_and_never_forwarded(
    emu: Emulator, make_sidecar: SidecarFactory, name: str
) -> None:
    """The same chunk errors, but found only after the request line and headers were accepted."""
    async with make_sidecar(endpoint=["fraud-ro"], **QUIET) as sidecar:
        before = invocations(emu)
        answer = await refusal(sidecar.port("http"), HOSTILE[name], body_later=True)
        await upstream_settled(emu)
        assert invocations(emu) == before, "the request (or part of it) reached the upstream"
        assert_databricks_error(answer)


async def test_header_limits_follow_the_settings(emu: Emulator, make_sidecar: SidecarFactory) -> None:
    async with make_sidecar(endpoint=["fraud-ro"], max_headers=20, max_header_bytes=4096, **QUIET) as sidecar:
        port = sidecar.port("http")
        assert (await answer_on_fresh_connection(port, many_headers(20))).status == 200
        assert (await answer_on_fresh_connection(port, sized_head(4096 - 512))).status == 200
        before = invocations(emu)
        for data in (many_headers(21), oversized_headers(4096), long_request_line(4096)):
            answer = await refusal(port, data)
            assert answer.status in {400, 414, 431}, answer.status
            assert_databricks_error(answer)
        await upstream_settled(emu)
        assert invocations(emu) == before


async def test_requests_within_the_default_header_limits_are_answered(make_sidecar: SidecarFactory) -> None:
    async with make_sidecar(endpoint=["fraud-ro"], **QUIET) as sidecar:
        port = sidecar.port("http")
        answer = await answer_on_fresh_connection(port, many_headers(DEFAULT_MAX_HEADERS))
        assert (answer.status, answer.json()) == (200, {"predictions": [1]})
        answer = await answer_on_fresh_connection(port, sized_head(DEFAULT_MAX_HEADER_BYTES - 512))
        assert (answer.status, answer.json()) == (200, {"predictions": [1]})


async def answer_on_fresh_connection(port: int, data: bytes) -> rawhttp.Response:
    reader, writer = await rawhttp.open_connection(port)
    try:
        writer.write(data)
        async with asyncio.timeout(ANSWER_WITHIN):
            return await rawhttp.read_response(reader)
    finally:
        rawhttp.close(writer)


# --- odd but valid ------------------------------------------------------------------------------


def echo_head(*lines: str, version: str = "HTTP/1.1") -> bytes:
    return "\r\n".join([f"POST {ECHO_PATH} {version}", "host: 127.0.0.1", *lines, "", ""]).encode("latin-1")


@pytest.fixture
async def echo_connection(make_sidecar: SidecarFactory) -> AsyncIterator[rawhttp.Connection]:
    """A connection to a sidecar whose `ECHO` endpoint is warm."""
    async with make_sidecar(endpoint=[ECHO], **QUIET) as sidecar:
        reader, writer = await rawhttp.open_connection(sidecar.port("http"))
        try:
            yield reader, writer
        finally:
            rawhttp.close(writer)


async def answers(reader: asyncio.StreamReader, count: int) -> list[rawhttp.Response]:
    async with asyncio.timeout(ANSWER_WITHIN):
        return [await rawhttp.read_response(reader) for _ in range(count)]


async def test_lowercase_chunked_with_chunk_extensions(echo_connection: rawhttp.Connection) -> None:
    reader, writer = echo_connection
    body = b'5;ext=1\r\nhello\r\n6;a;b="q x"\r\n world\r\n0;last\r\n\r\n'
    writer.write(echo_head("transfer-encoding: chunked", "content-type: text/plain") + body)
    [answer] = await answers(reader, 1)
    assert (answer.status, answer.body) == (200, b"hello world")
    assert not answer.closes


async def test_trailers_are_read_and_the_connection_stays_in_step(echo_connection: rawhttp.Connection) -> None:
    reader, writer = echo_connection
    writer.write(echo_head(TE) + b"3\r\nabc\r\n0\r\nX-Trailer: yes\r\nX-Checksum: 1\r\n\r\n")
    writer.write(rawhttp.request(ECHO_PATH, b"second"))
    first, second = await answers(reader, 2)
    assert (first.status, first.body) == (200, b"abc")
    assert (second.status, second.body) == (200, b"second")


async def test_expect_100_continue_gets_continue_before_the_body(echo_connection: rawhttp.Connection) -> None:
    reader, writer = echo_connection
    writer.write(echo_head("Expect: 100-continue", "Content-Length: 7"))
    [interim] = await answers(reader, 1)
    assert (interim.version, interim.status) == ("HTTP/1.1", 100)
    writer.write(b"payload")
    [answer] = await answers(reader, 1)
    assert (answer.status, answer.body) == (200, b"payload")


async def test_http_1_0_without_keep_alive_is_answered_then_closed(echo_connection: rawhttp.Connection) -> None:
    reader, writer = echo_connection
    writer.write(echo_head("Content-Length: 4", version="HTTP/1.0") + b"ping")
    [answer] = await answers(reader, 1)
    assert (answer.status, answer.body) == (200, b"ping")
    assert answer.header("Transfer-Encoding") is None  # an HTTP/1.0 caller cannot read chunked framing
    assert await rawhttp.read_until_closed(reader, ANSWER_WITHIN) == b""


async def test_pipelined_requests_are_answered_in_order(echo_connection: rawhttp.Connection) -> None:
    reader, writer = echo_connection
    bodies = [b"first", b"", b"third" * 1000, b"fourth"]
    writer.write(
        rawhttp.request(ECHO_PATH, bodies[0])
        + rawhttp.request(ECHO_PATH, bodies[1])
        + rawhttp.request(ECHO_PATH, chunks=[bodies[2][:7], bodies[2][7:]])
        + rawhttp.request(ECHO_PATH, bodies[3])
    )
    got = await answers(reader, len(bodies))
    assert [(a.status, a.body) for a in got] == [(200, body) for body in bodies]


async def test_empty_bodies_content_length_zero_and_chunked(echo_connection: rawhttp.Connection) -> None:
    reader, writer = echo_connection
    writer.write(echo_head("Content-Length: 0") + echo_head(TE) + b"0\r\n\r\n")
    first, second = await answers(reader, 2)
    assert (first.status, first.body, second.status, second.body) == (200, b"", 200, b"")
