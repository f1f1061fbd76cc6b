"""Deterministic model answers (pure)."""

from __future__ import annotations

import pytest

from proxy.emulator.models import Answer, InvalidInput, StreamedAnswer, answer, chat_reply, numeric_sum


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
        answer("chat", {"prompt": "x"}, model="m", created=0)
