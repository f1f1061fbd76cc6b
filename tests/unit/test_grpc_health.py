"""The gRPC health service: Check, Watch across changes and shutdown, watchers independent of each other."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

from proxy.downstream.health import NOT_SERVING, SERVICE_UNKNOWN, SERVING, HealthService

SERVICE = "servingsidecar.v1.ServingProxy"


class Aborted(Exception):
    pass


class FakeContext:
    def __init__(self) -> None:
        self.code: Any = None

    async def abort(self, code: Any, details: str = "") -> None:
        self.code = code
        raise Aborted(details)


def request(service: str = "") -> Any:
    return health_pb2.HealthCheckRequest(service=service)


async def check(health: HealthService, service: str = "") -> Any:
    return (await health.Check(request(service), FakeContext())).status


async def next_status(watch: AsyncIterator[Any]) -> Any:
    return (await asyncio.wait_for(anext(watch), 1)).status


async def test_check_follows_set_and_shut_down() -> None:
    health = HealthService([SERVICE])
    assert await check(health) == NOT_SERVING
    health.set(True)
    assert await check(health) == SERVING
    assert await check(health, SERVICE) == SERVING
    assert "SERVING" in repr(health)
    health.shut_down()
    health.set(True)  # ignored from now on
    assert await check(health, SERVICE) == NOT_SERVING
    assert "shut down" in repr(health)


async def test_check_of_an_unknown_service_is_not_found() -> None:
    context = FakeContext()
    with pytest.raises(Aborted):
        await HealthService([SERVICE]).Check(request("other.Service"), context)
    assert context.code == grpc.StatusCode.NOT_FOUND


async def test_watch_sends_changes_then_ends_after_shutdown() -> None:
    health = HealthService([SERVICE])
    watch = health.Watch(request(SERVICE), FakeContext())
    assert await next_status(watch) == NOT_SERVING
    health.set(True)
    health.set(False)
    health.set(True)  # changes while nobody reads coalesce to the latest
    assert await next_status(watch) == SERVING
    health.shut_down()
    assert await next_status(watch) == NOT_SERVING
    with pytest.raises(StopAsyncIteration):
        await anext(watch)


async def test_a_watcher_leaving_does_not_silence_the_others() -> None:
    health = HealthService([SERVICE])
    first, second = (health.Watch(request(SERVICE), FakeContext()) for _ in range(2))
    assert await next_status(first) == NOT_SERVING
    assert await next_status(second) == NOT_SERVING
    pending = asyncio.ensure_future(anext(first))
    await asyncio.sleep(0)
    pending.cancel()  # what grpc does to a Watch whose client went away
    with pytest.raises(asyncio.CancelledError):
        await pending
    health.set(True)
    assert await next_status(second) == SERVING


async def test_watch_of_an_unknown_service() -> None:
    health = HealthService([SERVICE])
    watch = health.Watch(request("other.Service"), FakeContext())
    assert await next_status(watch) == SERVICE_UNKNOWN
    health.shut_down()
    with pytest.raises(StopAsyncIteration):
        await anext(watch)


async def test_check_and_a_new_watch_refresh_the_status_first() -> None:
    ready = [False]
    health: HealthService

    def refresh() -> None:
        health.set(ready[0])

    health = HealthService([SERVICE], refresh=refresh)
    assert await check(health) == NOT_SERVING
    ready[0] = True  # changed, and nobody called set(): the Check itself recomputes
    assert await check(health) == SERVING
    ready[0] = False
    watch = health.Watch(request(SERVICE), FakeContext())
    assert await next_status(watch) == NOT_SERVING
