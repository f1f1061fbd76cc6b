"""Server-sent events: split an SSE byte stream into the data of its events, chunk by chunk. Pure.

Rules (after the WHATWG EventSource parsing rules, restricted to what a relay needs):
1. Lines end with CRLF, LF or CR; a CR at the end of a chunk waits for the next chunk (it may be a CRLF).
2. A blank line ends an event. An event with no `data` line (only comments, `event:`, `id:`, `retry:`)
   is not an event to relay and yields nothing.
3. `data:value` contributes `value` with one leading space removed; the `data` lines of one event are
   joined with LF. Lines starting with `:` are comments. Other fields are ignored.
4. Event data are bytes, never decoded or parsed: JSON stays exactly as the upstream wrote it.
5. At the end of the stream, an event missing its final blank line is still delivered (the spec drops it;
   a relay should not lose the last answer because an upstream skipped one newline).
"""

from __future__ import annotations

import re

_LINE_END = re.compile(rb"\r\n|\r|\n")


class SseSplitter:
    """Feed body chunks in arrival order; get back the data of every event they complete."""

    def __init__(self) -> None:
        self._buffer = bytearray()  # the unfinished last line
        self._data: list[bytes] | None = None  # data lines of the event being read; None: none yet
        self._pending = 0  # bytes held: unfinished line + data lines of the unfinished event

    def __repr__(self) -> str:
        lines = 0 if self._data is None else len(self._data)
        return f"SseSplitter(pending_bytes={self.pending_bytes}, pending_data_lines={lines})"

    @property
    def pending_bytes(self) -> int:
        """Bytes held for an event not yet complete: lets the caller bound an endless event."""
        return len(self._buffer) + self._pending

    def feed(self, chunk: bytes) -> list[bytes]:
        """The data of each event completed by `chunk` (rule 2), in order."""
        scan_from = max(0, len(self._buffer) - 1)  # the old remainder holds no line end but maybe a last CR
        self._buffer += chunk
        events: list[bytes] = []
        start = 0
        for end in _LINE_END.finditer(self._buffer, scan_from):
            if end.group() == b"\r" and end.end() == len(self._buffer):
                break  # rule 1: maybe the first half of a CRLF
            event = self._line(bytes(self._buffer[start : end.start()]))
            if event is not None:
                events.append(event)
            start = end.end()
        del self._buffer[:start]
        return events

    def close(self) -> list[bytes]:
        """The data of the last event if the stream ended without its blank line (rule 5)."""
        events = self.feed(b"\n") if self._buffer else []
        if self._data is not None:
            events.append(b"\n".join(self._data))
            self._data, self._pending = None, 0
        return events

    def _line(self, line: bytes) -> bytes | None:
        if not line:
            data, self._data, self._pending = self._data, None, 0
            return None if data is None else b"\n".join(data)
        name, colon, value = line.partition(b":")
        if name == b"data":
            if colon and value.startswith(b" "):
                value = value[1:]
            if self._data is None:
                self._data = []
            self._data.append(value)
            self._pending += len(value) + 1
        return None
