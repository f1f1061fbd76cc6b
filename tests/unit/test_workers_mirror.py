"""A worker's copies of the parent's resolutions and tokens, against a fake parent. No sockets."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from proxy.endpoints import Resolution
from proxy.errors import BadMetadata, EndpointNotFound, NoCredential
from proxy.workers.mirror import RemoteCredentials, RemoteResolver
from proxy.workers.wire import error_to_wire, resolution_to_wire, token_to_wire

WORKSPACE = "https://w.example.com"
FRAUD = Resolution("fraud-ro", "id-1", "https://h1/x/invocations", '[{"type":"t"}]', True)
HOUR = 3600.0


class FakeParent:
    """Answers calls from `answers` (op -> reply or SidecarError), after a loop turn; records everything."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.notes: list[tuple[str, dict[str, Any]]] = []

    def note(self, op: str, **fields: Any) -> None:
        self.notes.append((op, fields))

    async def call(self, op: str, **fields: Any) -> dict[str, Any]:
        self.calls.append((op, fields))
        await asyncio.sleep(0.01)
        answer = self.answers[op]
        if isinstance(answer, Exception):
            raise answer
        return dict(answer)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_an_unknown_name_is_asked_for_once_however_many_callers_wait() -> None:
    parent = FakeParent({"resolve": {"resolution": resolution_to_wire(FRAUD)}})
    resolver = RemoteResolver(parent)
    assert resolver.peek("fraud-ro") is None
    found = await asyncio.gather(*(resolver.resolve("fraud-ro") for _ in range(5)))
    assert found == [FRAUD] * 5
    assert parent.calls == [("resolve", {"name": "fraud-ro"})]
    assert resolver.cached("fraud-ro") == resolver.peek("fraud-ro") == FRAUD
    assert await resolver.resolve("fraud-ro") == FRAUD and len(parent.calls) == 1


async def test_the_parent_s_error_reaches_every_waiter_and_nothing_is_kept() -> None:
    parent = FakeParent({"resolve": EndpointNotFound("serving endpoint 'typo' does not exist")})
    resolver = RemoteResolver(parent)
    results = await asyncio.gather(*(resolver.resolve("typo") for _ in range(3)), return_exceptions=True)
    assert all(isinstance(result, EndpointNotFound) for result in results)
    assert len(parent.calls) == 1 and resolver.cached("typo") is None


async def test_a_name_in_use_nudges_the_parent_at_most_once_per_interval() -> None:
    clock = Clock()
    parent = FakeParent({})
    resolver = RemoteResolver(parent, clock=clock, nudge_interval=5.0)
    resolver.update("fraud-ro", FRAUD)  # the parent just resolved it: no nudge yet
    for _ in range(100):
        resolver.peek("fraud-ro")
    assert parent.notes == []
    clock.now += 5.0
    for _ in range(100):
        resolver.peek("fraud-ro")
    assert parent.notes == [("nudge", {"name": "fraud-ro"})]


async def test_changes_from_the_parent_replace_or_drop_a_name() -> None:
    resolver = RemoteResolver(FakeParent({}))
    resolver.update("fraud-ro", FRAUD)
    moved = Resolution("fraud-ro", "id-2", "https://h2/x/invocations", '[{"type":"t"}]', True)
    resolver.update("fraud-ro", moved)
    assert resolver.peek("fraud-ro") == moved
    resolver.update("fraud-ro", None)
    assert resolver.peek("fraud-ro") is None


async def test_recheck_asks_the_parent_and_keeps_what_it_found() -> None:
    moved = Resolution("fraud-ro", "id-2", "https://h2/x/invocations", '[{"type":"t"}]', True)
    parent = FakeParent({"recheck": {"resolution": resolution_to_wire(moved)}})
    resolver = RemoteResolver(parent)
    assert await resolver.recheck(FRAUD) == moved
    assert resolver.cached("fraud-ro") == moved
    parent.answers["recheck"] = {"resolution": None}
    assert await resolver.recheck(moved) is None


async def test_a_missing_token_is_asked_for_once_and_then_served_from_memory() -> None:
    parent = FakeParent({"token": {"token": token_to_wire("dp-1", time.time() + HOUR)}})
    credentials = RemoteCredentials(parent, workspace_url=WORKSPACE)
    source = credentials.for_target(FRAUD.url, FRAUD.authorization_details, label="fraud-ro")
    assert source.peek() is None
    assert await asyncio.gather(*(source.get() for _ in range(4))) == ["dp-1"] * 4
    assert parent.calls == [
        (
            "token",
            {"key": {"url": FRAUD.url, "authorization_details": FRAUD.authorization_details}, "label": "fraud-ro"},
        )
    ]
    assert (
        source.peek() == "dp-1" and credentials.for_target(FRAUD.url, FRAUD.authorization_details, label="") is source
    )
    assert credentials.for_target(f"{WORKSPACE}/serving-endpoints/x/invocations", None, label="x") is (
        credentials.workspace
    )


def test_tokens_go_only_where_a_single_process_would_send_them() -> None:
    credentials = RemoteCredentials(FakeParent({}), workspace_url=WORKSPACE)
    with pytest.raises(BadMetadata, match="workspace token"):
        credentials.for_target("https://elsewhere.example/serving-endpoints/x/invocations", None, label="x")
    with pytest.raises(BadMetadata, match="only over https"):
        credentials.for_target("http://h1/x/invocations", '[{"type":"t"}]', label="x")


async def test_a_token_close_to_expiry_is_not_used() -> None:
    parent = FakeParent({"token": {"token": token_to_wire("fresh", time.time() + HOUR)}})
    credentials = RemoteCredentials(parent)
    credentials.update(None, "old", time.time() + 30)  # Databricks refuses tokens with <= 30 s left
    assert credentials.workspace.peek() is None
    assert await credentials.workspace.get() == "fresh"


async def test_a_401_drops_the_token_here_and_tells_the_parent() -> None:
    credentials = RemoteCredentials(FakeParent({}))
    parent = credentials.workspace._parent
    assert isinstance(parent, FakeParent)
    credentials.update(None, "ws-1", time.time() + HOUR)
    credentials.workspace.invalidate("ws-0")  # an older token: the current one stays
    assert credentials.workspace.peek() == "ws-1"
    credentials.workspace.invalidate("ws-1")
    assert credentials.workspace.peek() is None
    key = {"url": None, "authorization_details": None}
    assert parent.notes == [
        ("invalidate", {"key": key, "access_token": "ws-0"}),
        ("invalidate", {"key": key, "access_token": "ws-1"}),
    ]


async def test_tokens_the_parent_sends_are_used_at_once_and_forgotten_when_it_says() -> None:
    parent = FakeParent({"token": NoCredential("token server down", retry_after=3)})
    credentials = RemoteCredentials(parent)
    key = (FRAUD.url, str(FRAUD.authorization_details))
    credentials.update(key, "dp-2", time.time() + HOUR)
    source = credentials.for_target(*key, label="fraud-ro")
    assert source.peek() == "dp-2" and parent.calls == []
    credentials.forget(key)
    fresh = credentials.for_target(*key, label="fraud-ro")
    assert fresh is not source and fresh.peek() is None
    with pytest.raises(NoCredential) as raised:
        await fresh.get()
    assert raised.value.retry_after == 3
    assert error_to_wire(raised.value)["type"] == "NoCredential"
