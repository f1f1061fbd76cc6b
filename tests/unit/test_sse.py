"""SSE splitting: event data out of arbitrary chunking, line endings and field mixes."""

from __future__ import annotations

import pytest

from proxy.downstream.sse import SseSplitter

CHAT = (
    b'data: {"choices": [{"delta": {"role": "assistant"}}]}\n\n'
    b'data: {"choices": [{"delta": {"content": "hello"}}]}\n\n'
    b"data: [DONE]\n\n"
)
EXPECTED = [
    b'{"choices": [{"delta": {"role": "assistant"}}]}',
    b'{"choices": [{"delta": {"content": "hello"}}]}',
    b"[DONE]",
]


def split(chunks: list[bytes]) -> list[bytes]:
    splitter = SseSplitter()
    events = [event for chunk in chunks for event in splitter.feed(chunk)]
    return events + splitter.close()


def test_whole_stream_in_one_chunk() -> None:
    assert split([CHAT]) == EXPECTED


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64])
def test_any_chunking_gives_the_same_events(size: int) -> None:
    chunks = [CHAT[i : i + size] for i in range(0, len(CHAT), size)]
    assert split(chunks) == EXPECTED


@pytest.mark.parametrize("newline", [b"\r\n", b"\r", b"\n"])
def test_every_line_ending(newline: bytes) -> None:
    stream = CHAT.replace(b"\n", newline)
    assert split([stream]) == EXPECTED
    assert split([stream[i : i + 1] for i in range(len(stream))]) == EXPECTED


def test_cr_at_a_chunk_end_waits_for_a_possible_lf() -> None:
    splitter = SseSplitter()
    assert splitter.feed(b"data: a\r") == []
    assert splitter.feed(b"\n\r") == []
    assert splitter.feed(b"\n") == [b"a"]  # CRLF CRLF: one event, not two blank lines' worth of confusion
    assert splitter.close() == []


def test_events_are_delivered_as_soon_as_complete() -> None:
    splitter = SseSplitter()
    assert splitter.feed(b"data: one\n") == []
    assert splitter.feed(b"\ndata: tw") == [b"one"]
    assert splitter.feed(b"o\n\n") == [b"two"]


def test_multi_line_data_comments_and_other_fields() -> None:
    stream = b": keep-alive\n\nevent: delta\nid: 7\nretry: 100\ndata: first\ndata:second\ndata\n\n"
    assert split([stream]) == [b"first\nsecond\n"]


def test_only_one_leading_space_is_removed_and_bytes_are_untouched() -> None:
    assert split([b"data:   x \xff\n\n"]) == [b"  x \xff"]


def test_a_last_event_without_its_blank_line_is_not_lost() -> None:
    assert split([b"data: a\n\ndata: b"]) == [b"a", b"b"]
    assert split([b"data: a\n\ndata: b\r"]) == [b"a", b"b"]


def test_pending_bytes_bound_an_unfinished_event() -> None:
    splitter = SseSplitter()
    splitter.feed(b"data: " + b"x" * 100)
    assert splitter.pending_bytes >= 100
    splitter.feed(b"\ndata: yy\n")
    assert splitter.pending_bytes >= 102
    assert splitter.feed(b"\n") == [b"x" * 100 + b"\nyy"]
    assert splitter.pending_bytes == 0
    assert "pending_bytes=0" in repr(splitter)
