"""The channel between the parent and one worker: length-prefixed JSON messages over a Unix socketpair.

Rules:
1. A frame is a 4-byte big-endian length and that many bytes of UTF-8 JSON, an object. Frames over
   MAX_FRAME end the channel (a bug, not a condition to recover from).
2. Three kinds of message: a note `{"op": ...}` (no answer), a call `{"op": ..., "call": id}` answered
   by exactly one reply `{"reply": id, "ok": {...}}` or `{"reply": id, "error": {...}}` (a SidecarError,
   see `wire`). Calls are answered in any order: each runs in its own task, so a slow one (a token fetch)
   does not hold up the others.
3. Sending never waits: frames go to the transport's buffer at once, so notes can be sent from the
   data path's callbacks.
4. When the channel closes (EOF, a bad frame, `close()`), calls waiting for a reply fail with
   ChannelClosed and `closed` is set; the owner learns it when `run()` returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import struct
from collections.abc import Awaitable, Callable
from typing import Any

from proxy.errors import SidecarError
from proxy.workers.wire import error_from_wire, error_to_wire

log = logging.getLogger("serving_sidecar")

MAX_FRAME = 64 * 1024 * 1024
_LENGTH = struct.Struct(">I")

Message = dict[str, Any]
NoteHandler = Callable[[str, Message], None]
CallHandler = Callable[[str, Message], Awaitable[Message]]


class ChannelClosed(SidecarError):
    """The other process went away while a call waited for its reply."""

    status = 503
    error_code = "TEMPORARILY_UNAVAILABLE"


def encode(message: Message) -> bytes:
    """One frame (rule 1)."""
    payload = json.dumps(message, separators=(",", ":")).encode()
    return _LENGTH.pack(len(payload)) + payload


class Channel:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        on_note: NoteHandler,
        on_call: CallHandler,
        name: str = "channel",
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._on_note = on_note
        self._on_call = on_call
        self.name = name
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Message]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.closed = False

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"Channel({self.name}, {state}, waiting={len(self._waiting)}, calls_running={len(self._tasks)})"

    def note(self, op: str, **fields: Any) -> None:
        """Send a note (rule 3); dropped when the channel is closed."""
        self._send({"op": op, **fields})

    async def call(self, op: str, **fields: Any) -> Message:
        """Send a call and wait for its reply: the `ok` object, or the SidecarError it carried."""
        if self.closed:
            raise ChannelClosed(f"{self.name} is closed")
        call_id = next(self._ids)
        waiter = self._waiting[call_id] = asyncio.get_running_loop().create_future()
        self._send({"op": op, "call": call_id, **fields})
        try:
            reply: Message = await waiter
            return reply
        finally:
            self._waiting.pop(call_id, None)

    async def run(self) -> None:
        """Read and dispatch frames until the channel closes (rule 4)."""
        try:
            while True:
                message = await self._read()
                if message is None:
                    return
                self._dispatch(message)
        except (OSError, ValueError) as error:
            if not self.closed:
                log.warning("%s: %s; closing it", self.name, error)
        finally:
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for waiter in self._waiting.values():
            if not waiter.done():
                waiter.set_exception(ChannelClosed(f"{self.name} closed before its reply came"))
        for task in self._tasks:
            task.cancel()
        with contextlib.suppress(OSError, RuntimeError):
            self._writer.close()

    async def _read(self) -> Message | None:
        try:
            head = await self._reader.readexactly(_LENGTH.size)
        except asyncio.IncompleteReadError:
            return None  # EOF: the other process closed its end or exited
        (length,) = _LENGTH.unpack(head)
        if length > MAX_FRAME:
            raise ValueError(f"frame of {length} bytes is over the {MAX_FRAME} limit")
        try:
            message = json.loads(await self._reader.readexactly(length))
        except asyncio.IncompleteReadError:
            return None
        if not isinstance(message, dict):
            raise ValueError("a frame must hold a JSON object")
        return message

    def _dispatch(self, message: Message) -> None:
        if "reply" in message:
            waiter = self._waiting.get(message["reply"])
            if waiter is not None and not waiter.done():
                if "error" in message:
                    waiter.set_exception(error_from_wire(message["error"]))
                else:
                    waiter.set_result(message.get("ok") or {})
            return
        op = str(message.get("op"))
        if "call" in message:
            task = asyncio.get_running_loop().create_task(self._answer(op, message))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        try:
            self._on_note(op, message)
        except Exception:
            log.exception("%s: handling note %r failed", self.name, op)

    async def _answer(self, op: str, message: Message) -> None:
        call_id = message["call"]
        try:
            result = await self._on_call(op, message)
        except SidecarError as error:
            self._send({"reply": call_id, "error": error_to_wire(error)})
        except Exception as exc:
            log.exception("%s: answering %r failed", self.name, op)
            internal = SidecarError(f"internal error in serving-sidecar ({type(exc).__name__}); see its log")
            self._send({"reply": call_id, "error": error_to_wire(internal)})
        else:
            self._send({"reply": call_id, "ok": result})

    def _send(self, message: Message) -> None:
        if self.closed or self._writer.is_closing():
            return
        self._writer.write(encode(message))
