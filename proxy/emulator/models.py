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
- ``chat``: the reply is ``"echo: " + <text of the last user message>`` (``"echo: "`` when there is
  none), in the shape the request asks for:
  - ``messages`` (a list of ``{role, content}``; chat completions): without ``"stream": true`` an OpenAI
    ``chat.completion`` object. With it, one ``chat.completion.chunk`` per word of the reply:
    ``choices[0].delta.content`` is the word, preceded by a space for every word but the first, so the
    deltas concatenate to the reply; the last chunk has ``finish_reason: "stop"``.
  - else ``input`` (a string, or a list of ``{role, content}`` items; the Responses API, as a Databricks
    ``ResponsesAgent`` takes it): a ``response`` object whose ``output`` is one assistant ``message``
    with one ``output_text``. Streamed: one ``response.output_text.delta`` event per word (same
    spacing), then ``response.output_item.done`` with the whole message, then ``response.completed``.
  - else ``prompt`` (a string; legacy completions): a ``text_completion`` object, ``choices[0].text``
    the reply (``"echo: " + prompt``).
  A streamed answer ends with ``data: [DONE]``.
- ``embeddings``: the body needs ``input``, a string or a non-empty list of strings (OpenAI
  embeddings). The answer is an OpenAI ``list`` of ``embedding`` objects, one per input in order, each
  ``EMBEDDING_DIMENSIONS`` floats derived from the text's SHA-256 (byte ``b`` gives ``(b - 128) / 128``,
  exact in float32). ``"encoding_format": "base64"`` sends each vector as base64 of little-endian
  float32, as OpenAI does.
- ``echo``: no model here: the data plane answers the request body itself, byte for byte, as
  ``application/octet-stream`` (any content type, JSON or not), so tests see exactly what arrived.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from proxy.emulator.settings import EndpointKind

EMBEDDING_DIMENSIONS = 8
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
    if kind == "embeddings":
        return _embeddings(mapping, model=model)
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
    """Chat completions (``messages``), else the Responses API (``input``), else completions (``prompt``)."""
    if "messages" not in body and "input" in body:
        return _response(body, model=model, created=created)
    if "messages" not in body and "prompt" in body:
        return _text_completion(body, model=model, created=created)
    return _chat_completion(body, model=model, created=created)


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:24]


def _pieces(reply: str) -> list[str]:
    """The reply's words, each but the first with its leading space: they concatenate to the reply."""
    return [word if i == 0 else " " + word for i, word in enumerate(reply.split(" "))]


def _usage(prompt: object, reply: str) -> dict[str, int]:
    usage = {"prompt_tokens": len(json.dumps(prompt).split()), "completion_tokens": len(reply.split())}
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    return usage


def _chat_completion(body: Mapping[str, Any], *, model: str, created: int) -> Answer | StreamedAnswer:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidInput("Invalid input. 'messages' must be a non-empty list of {role, content} objects.")
    reply = chat_reply(messages)
    completion_id = "chatcmpl-" + _digest(messages)
    if body.get("stream") is True:
        return StreamedAnswer(_chunks(reply, completion_id, model, created))
    return Answer(
        {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
            "usage": _usage(messages, reply),
        }
    )


def _chunks(reply: str, completion_id: str, model: str, created: int) -> tuple[dict[str, Any], ...]:
    pieces = _pieces(reply)
    last = len(pieces) - 1
    return tuple(
        {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "delta": {"role": "assistant", "content": piece},
                    "finish_reason": "stop" if i == last else None,
                }
            ],
        }
        for i, piece in enumerate(pieces)
    )


def _input_messages(value: object) -> list[Any]:
    """The Responses API's ``input``: a string is one user message."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if isinstance(value, list) and value and all(isinstance(item, Mapping) for item in value):
        return value
    raise InvalidInput("Invalid input. 'input' must be a string or a non-empty list of {role, content} items.")


def _response(body: Mapping[str, Any], *, model: str, created: int) -> Answer | StreamedAnswer:
    messages = _input_messages(body.get("input"))
    reply = chat_reply(messages)
    digest = _digest(messages)
    item: dict[str, Any] = {
        "type": "message",
        "id": "msg_" + digest,
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": reply, "annotations": []}],
    }
    usage = _usage(messages, reply)
    response: dict[str, Any] = {
        "id": "resp_" + digest,
        "object": "response",
        "created_at": created,
        "model": model,
        "status": "completed",
        "output": [item],
        "usage": {
            "input_tokens": usage["prompt_tokens"],
            "output_tokens": usage["completion_tokens"],
            "total_tokens": usage["total_tokens"],
        },
    }
    if body.get("stream") is not True:
        return Answer(response)
    events: list[dict[str, Any]] = [
        {"type": "response.output_text.delta", "item_id": item["id"], "output_index": 0, "content_index": 0, "delta": p}
        for p in _pieces(reply)
    ]
    events.append({"type": "response.output_item.done", "output_index": 0, "item": item})
    events.append({"type": "response.completed", "response": response})
    return StreamedAnswer(tuple({**event, "sequence_number": i} for i, event in enumerate(events)))


def _text_completion(body: Mapping[str, Any], *, model: str, created: int) -> Answer | StreamedAnswer:
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        raise InvalidInput("Invalid input. 'prompt' must be a string.")
    reply = "echo: " + prompt
    completion_id = "cmpl-" + _digest(prompt)
    pieces = _pieces(reply) if body.get("stream") is True else [reply]
    last = len(pieces) - 1
    objects = tuple(
        {
            "id": completion_id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "text": piece, "finish_reason": "stop" if i == last else None, "logprobs": None}],
        }
        for i, piece in enumerate(pieces)
    )
    if body.get("stream") is True:
        return StreamedAnswer(objects)
    return Answer({**objects[0], "usage": _usage(prompt, reply)})


def embedding(text: str) -> list[float]:
    """The emulated embedding of ``text``: ``EMBEDDING_DIMENSIONS`` values in [-1, 1), exact in float32."""
    return [(byte - 128) / 128 for byte in hashlib.sha256(text.encode()).digest()[:EMBEDDING_DIMENSIONS]]


def _embeddings(body: Mapping[str, Any], *, model: str) -> Answer:
    texts = body.get("input")
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise InvalidInput("Invalid input. 'input' must be a string or a non-empty list of strings.")
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise InvalidInput(f"Invalid input. 'encoding_format' must be 'float' or 'base64', got {encoding!r}.")
    data = [
        {"object": "embedding", "index": i, "embedding": _encoded(embedding(text), base64_format=encoding == "base64")}
        for i, text in enumerate(texts)
    ]
    tokens = sum(len(text.split()) for text in texts)
    return Answer(
        {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
    )


def _encoded(vector: list[float], *, base64_format: bool) -> list[float] | str:
    if not base64_format:
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
