"""Deterministic model answers (pure)."""

from __future__ import annotations

import base64
import struct

import pytest

from proxy.emulator.models import (
    EMBEDDING_DIMENSIONS,
    Answer,
    InvalidInput,
    StreamedAnswer,
    answer,
    chat_reply,
    embedding,
    numeric_sum,
)


def test_numeric_sum_counts_numbers_only() -> None:
    assert numeric_sum({"a": 1, "b": [2, {"c": 3.5}], "d": "7", "e": True, "f": None}) == 6.5
    assert numeric_sum([]) == 0
    assert isinstance(numeric_sum([1, 2]), int)


def test_custom_answers_are_per_row() -> None:
    result = answer("custom", {"dataframe_records": [{"a": 1}, {"a": 2, "b": 3}]}, model="m", created=0)
    assert result == Answer({"predictions": [1, 5]})


def test_feature_answers_copy_the_record_and_add_a_score() -> None:
    result = answer("feature", {"dataframe_records": [{"id": "x", "v": 2}]}, model="m", created=0)
    assert result == Answer({"outputs": [{"id": "x", "v": 2, "score": 2}]})


@pytest.mark.parametrize(
    "body",
    [{}, {"inputs": 1, "instances": []}, [], "x", {"dataframe_split": {"data": 5}}, {"dataframe_records": 3}],
)
def test_custom_input_errors(body: object) -> None:
    with pytest.raises(InvalidInput):
        answer("custom", body, model="m", created=0)


def test_exactly_one_key_message_is_mlflow_s() -> None:
    with pytest.raises(InvalidInput, match="The input must be a JSON dictionary with exactly one of the input fields"):
        answer("custom", {"params": {}}, model="m", created=0)


def test_chat_reply_echoes_the_last_user_message() -> None:
    messages = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": "z"},
    ]
    assert chat_reply(messages) == "echo: ab"
    assert chat_reply([{"role": "system", "content": "s"}]) == "echo: "


def test_chat_completion_and_chunks() -> None:
    body = {"messages": [{"role": "user", "content": "one two"}]}
    completion = answer("chat", body, model="m", created=7)
    assert isinstance(completion, Answer)
    assert completion.body["choices"][0]["message"]["content"] == "echo: one two"
    assert completion.body["created"] == 7
    streamed = answer("chat", {**body, "stream": True}, model="m", created=7)
    assert isinstance(streamed, StreamedAnswer)
    deltas = [e["choices"][0]["delta"]["content"] for e in streamed.events]
    assert deltas == ["echo:", " one", " two"]
    assert streamed.events[0]["id"] == completion.body["id"]


def test_chat_needs_messages() -> None:
    with pytest.raises(InvalidInput, match="messages"):
        answer("chat", {"inputs": "x"}, model="m", created=0)


def test_chat_answers_the_responses_api_shape_for_input() -> None:
    body = {"input": [{"role": "user", "content": [{"type": "input_text", "text": "one two"}]}]}
    response = answer("chat", body, model="m", created=7)
    assert isinstance(response, Answer)
    assert response.body["object"] == "response"
    [item] = response.body["output"]
    assert (item["type"], item["role"]) == ("message", "assistant")
    assert item["content"] == [{"type": "output_text", "text": "echo: one two", "annotations": []}]
    as_text = answer("chat", {"input": "one two"}, model="m", created=7)  # a string is one user message
    assert isinstance(as_text, Answer)
    assert as_text.body["output"][0]["content"] == item["content"]

    streamed = answer("chat", {**body, "stream": True}, model="m", created=7)
    assert isinstance(streamed, StreamedAnswer)
    types = [event["type"] for event in streamed.events]
    assert types == ["response.output_text.delta"] * 3 + ["response.output_item.done", "response.completed"]
    assert "".join(e["delta"] for e in streamed.events[:3]) == "echo: one two"
    assert streamed.events[-1]["response"] == response.body
    assert [e["sequence_number"] for e in streamed.events] == list(range(5))


def test_chat_answers_a_text_completion_for_prompt() -> None:
    completion = answer("chat", {"prompt": "one two"}, model="m", created=7)
    assert isinstance(completion, Answer)
    assert completion.body["object"] == "text_completion"
    assert completion.body["choices"][0]["text"] == "echo: one two"
    streamed = answer("chat", {"prompt": "one two", "stream": True}, model="m", created=7)
    assert isinstance(streamed, StreamedAnswer)
    assert "".join(e["choices"][0]["text"] for e in streamed.events) == "echo: one two"
    with pytest.raises(InvalidInput, match="prompt"):
        answer("chat", {"prompt": ["x"]}, model="m", created=0)


@pytest.mark.parametrize("body", [{"input": 3}, {"input": []}, {"input": [{"role": "user"}, "x"]}])
def test_responses_input_must_be_text_or_items(body: dict[str, object]) -> None:
    with pytest.raises(InvalidInput, match="'input'"):
        answer("chat", body, model="m", created=0)


def test_embeddings_answer_one_vector_per_input_in_order() -> None:
    result = answer("embeddings", {"input": ["a", "b c"]}, model="e-1", created=0)
    assert isinstance(result, Answer)
    assert result.body["object"] == "list"
    assert result.body["model"] == "e-1"
    assert [d["index"] for d in result.body["data"]] == [0, 1]
    assert [d["embedding"] for d in result.body["data"]] == [embedding("a"), embedding("b c")]
    assert len(embedding("a")) == EMBEDDING_DIMENSIONS
    assert embedding("a") != embedding("b c")
    assert all(-1 <= x < 1 for x in embedding("a"))
    single = answer("embeddings", {"input": "a"}, model="e-1", created=0)
    assert isinstance(single, Answer)
    assert single.body["data"][0]["embedding"] == embedding("a")


def test_embeddings_in_base64_are_little_endian_float32() -> None:
    result = answer("embeddings", {"input": "a", "encoding_format": "base64"}, model="e", created=0)
    assert isinstance(result, Answer)
    raw = base64.b64decode(result.body["data"][0]["embedding"])
    assert list(struct.unpack(f"<{EMBEDDING_DIMENSIONS}f", raw)) == embedding("a")


@pytest.mark.parametrize(
    "body", [{}, {"input": []}, {"input": [1]}, {"input": "a", "encoding_format": "int8"}, {"inputs": ["a"]}]
)
def test_embeddings_refuse_bad_input(body: dict[str, object]) -> None:
    with pytest.raises(InvalidInput):
        answer("embeddings", body, model="e", created=0)
