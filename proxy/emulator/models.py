"""Deterministic model answers, pure functions of the parsed request body.

Answers (tests elsewhere check them):

- ``custom``: the body must hold exactly one of ``dataframe_split``, ``dataframe_records``,
  ``instances``, ``inputs`` (MLflow's rule; other keys such as ``params`` are ignored). Answer
  ``{"predictions": [...]}`` with one prediction per row, each the sum of the row's numeric leaves
  (numbers anywhere inside it; booleans and strings do not count):
  ``dataframe_records`` per record, ``dataframe_split`` per row of ``data``, ``instances`` per
  element, ``inputs`` per element when it is a list, else one prediction for the whole value.
  Integers stay integers: ``{"dataframe_records": [{"a": 1, "b": 2.5}, {"a": 3}]}`` gives
  ``{"predictions": [3.5, 3]}``.
- ``feature``: same input rule (``dataframe_records`` or ``dataframe_split``), answer
  ``{"outputs": [{...the record..., "score": <sum of its numeric leaves>}, ...]}``.
- ``chat``: the body needs ``messages`` (a list of ``{role, content}``). The reply is
  ``"echo: " + <content of the last user message>`` (``"echo: "`` when there is none).
  Without ``"stream": true`` the answer is an OpenAI ``chat.completion`` object. With it, the answer
  is one ``chat.completion.chunk`` per word of the reply: ``choices[0].delta.content`` is the word,
  preceded by a space for every word but the first, so the deltas concatenate to the reply; the
  last chunk has ``finish_reason: "stop"``. The server then sends ``data: [DONE]``.
- ``echo``: no model here: the data plane answers the request body itself, byte for byte, as
  ``application/octet-stream`` (any content type, JSON or not), so tests see exactly what arrived.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from proxy.emulator.settings import EndpointKind

INPUT_KEYS = ("dataframe_records", "dataframe_split", "inputs", "instances")
_INPUT_KEYS_TEXT = "{" + ", ".join(f"'{k}'" for k in INPUT_KEYS) + "}"
REQUIRED_INPUT_FORMAT = f"The input must be a JSON dictionary with exactly one of the input fields {_INPUT_KEYS_TEXT}"


class InvalidInput(ValueError):
    """The body is not acceptable for this model; the message is MLflow's / Databricks' text."""


@dataclass(frozen=True)
class Answer:
    """A non-streamed JSON answer."""

    body: dict[str, Any]


@dataclass(frozen=True)
class StreamedAnswer:
    """A streamed answer: one JSON object per SSE event, then ``[DONE]``."""

    events: tuple[dict[str, Any], ...]


def answer(kind: EndpointKind, body: object, *, model: str, created: int) -> Answer | StreamedAnswer:
    """Answer ``body`` as an endpoint of ``kind`` served by ``model``; raise ``InvalidInput``."""
    mapping = _require_dict(body)
    if kind == "chat":
        return _chat(mapping, model=model, created=created)
    key, value = _single_input(mapping)
    if kind == "feature":
        return Answer({"outputs": [{**record, "score": numeric_sum(record)} for record in _records(key, value)]})
    return Answer({"predictions": [numeric_sum(row) for row in _rows(key, value)]})


def numeric_sum(value: object) -> int | float:
    """Sum of every number inside ``value`` (dict values and list items, recursively; no bools)."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int | float):
        return value
    if isinstance(value, Mapping):
        return sum((numeric_sum(v) for v in value.values()), 0)
    if isinstance(value, list):
        return sum((numeric_sum(v) for v in value), 0)
    return 0


def _require_dict(body: object) -> Mapping[str, Any]:
    if isinstance(body, dict):
        return body
    received = "Received a list" if isinstance(body, list) else f"Received unexpected input type '{type(body)}'"
    raise InvalidInput(f"{REQUIRED_INPUT_FORMAT}. {received}.")


def _single_input(body: Mapping[str, Any]) -> tuple[str, Any]:
    present = [k for k in INPUT_KEYS if k in body]
    if len(present) != 1:
        raise InvalidInput(f"{REQUIRED_INPUT_FORMAT}. Received dictionary with input fields: {list(body)}.")
    return present[0], body[present[0]]


def _rows(key: str, value: Any) -> list[Any]:
    if key == "dataframe_split":
        return _split_data(value)
    if key == "inputs" and not isinstance(value, list):
        return [value]
    if not isinstance(value, list):
        raise InvalidInput(f"Invalid input. '{key}' must be a list.")
    return value


def _split_data(value: Any) -> list[Any]:
    if not isinstance(value, Mapping) or not isinstance(value.get("data"), list):
        raise InvalidInput("Invalid input. 'dataframe_split' must be an object with a 'data' list.")
    return list(value["data"])


def _records(key: str, value: Any) -> list[dict[str, Any]]:
    if key == "dataframe_records":
        if not isinstance(value, list) or not all(isinstance(r, dict) for r in value):
            raise InvalidInput("Invalid input. 'dataframe_records' must be a list of objects.")
        return value
    if key == "dataframe_split":
        columns = value.get("columns") if isinstance(value, Mapping) else None
        rows = _split_data(value)
        if not isinstance(columns, list) or not all(isinstance(row, list) for row in rows):
            raise InvalidInput("Invalid input. 'dataframe_split' needs 'columns' and a 'data' list of rows.")
        return [dict(zip((str(c) for c in columns), row, strict=False)) for row in rows]
    raise InvalidInput(f"Invalid input. A feature spec takes 'dataframe_records' or 'dataframe_split', not '{key}'.")


def chat_reply(messages: list[Any]) -> str:
    """``"echo: "`` plus the text of the last user message."""
    for message in reversed(messages):
        if isinstance(message, Mapping) and message.get("role") == "user":
            return "echo: " + _text(message.get("content"))
    return "echo: "


def _text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, Mapping)]
        return "".join(p for p in parts if isinstance(p, str))
    return ""


def _chat(body: Mapping[str, Any], *, model: str, created: int) -> Answer | StreamedAnswer:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidInput("Invalid input. 'messages' must be a non-empty list of {role, content} objects.")
    reply = chat_reply(messages)
    digest = hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()
    completion_id = "chatcmpl-" + digest[:24]
    if body.get("stream") is True:
        return StreamedAnswer(_chunks(reply, completion_id, model, created))
    usage = {"prompt_tokens": len(json.dumps(messages).split()), "completion_tokens": len(reply.split())}
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    return Answer(
        {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
            "usage": usage,
        }
    )


def _chunks(reply: str, completion_id: str, model: str, created: int) -> tuple[dict[str, Any], ...]:
    words = reply.split(" ")
    last = len(words) - 1
    return tuple(
        {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "delta": {"role": "assistant", "content": word if i == 0 else " " + word},
                    "finish_reason": "stop" if i == last else None,
                }
            ],
        }
        for i, word in enumerate(words)
    )
