"""gRPC health says what /readyz says at every instant (both follow readiness events, nothing polls);
undecodable protobufs are INVALID_ARGUMENT; calls shed by admission are counted on both fronts."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from proxy._proto.servingsidecar.v1 import serving_proxy_pb2 as pb
from proxy._proto.servingsidecar.v1 import serving_proxy_pb2_grpc as pb_grpc
from proxy.app import Sidecar
from proxy.emulator import Emulator

from .conftest import SidecarFactory, url

SERVICE = "servingsidecar.v1.ServingProxy"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
LIMIT = 20.0  # seconds any awaited change may take on a loaded machine


@pytest.fixture
async def channel_for() -> AsyncIterator[list[grpc.aio.Channel]]:
    channels: list[grpc.aio.Channel] = []
    yield channels
    for channel in channels:
        await channel.close()


def open_channel(sidecar: Sidecar, channels: list[grpc.aio.Channel]) -> grpc.aio.Channel:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.port('grpc')}")
    channels.append(channel)
    return channel


async def check(stub: health_pb2_grpc.HealthStub, service: str = "") -> int:
    return int((await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=LIMIT)).status)


async def readyz_status(client: aiohttp.ClientSession, sidecar: Sidecar) -> int:
    async with client.get(url(sidecar, "/readyz", "admin")) as resp:
        return resp.status


async def until_readyz(client: aiohttp.ClientSession, sidecar: Sidecar, status: int) -> None:
    deadline = time.monotonic() + LIMIT
    while await readyz_status(client, sidecar) != status:
        assert time.monotonic() < deadline, f"/readyz never answered {status}"


async def test_grpc_health_is_serving_the_moment_readyz_turns_200(
    emu: Emulator, make_sidecar: SidecarFactory, client: aiohttp.ClientSession, channel_for: list[grpc.aio.Channel]
) -> None:
    emu.faults.token_latency = 1.0  # a window in which both must say "not yet"
    async with make_sidecar(wait_ready=False) as sidecar:
        health = health_pb2_grpc.HealthStub(open_channel(sidecar, channel_for))
        watch = health.Watch(health_pb2.HealthCheckRequest(service=SERVICE))
        assert (await watch.read()).status == NOT_SERVING
        assert await readyz_status(client, sidecar) == 503 and await check(health) == NOT_SERVING
        await until_readyz(client, sidecar, 200)
        # Right after /readyz said 200, with no wait: gRPC says the same (polling lagged up to 0.2 s).
        assert await check(health) == SERVING
        assert await check(health, SERVICE) == SERVING
        assert (await asyncio.wait_for(watch.read(), LIMIT)).status == SERVING
        # At drain both flip together.
        sidecar.begin_draining()
        assert await check(health) == NOT_SERVING
        assert await readyz_status(client, sidecar) == 503
        assert (await asyncio.wait_for(watch.read(), LIMIT)).status == NOT_SERVING


async def test_a_token_expiring_unrefreshed_flips_both_with_no_request_in_between(
    emu: Emulator, make_sidecar: SidecarFactory, client: aiohttp.ClientSession, channel_for: list[grpc.aio.Channel]
) -> None:
    # A 46 s token is usable for 6 s; with the token server down its refresh fails, and readiness must
    # turn to "unavailable" when the token does, with nobody asking: the event is the token expiring.
    emu.faults.cp_token_ttl = 46
    async with make_sidecar() as sidecar:
        emu.faults.token_outage = True
        health = health_pb2_grpc.HealthStub(open_channel(sidecar, channel_for))
        watch = health.Watch(health_pb2.HealthCheckRequest(service=SERVICE))
        assert (await watch.read()).status == SERVING
        assert (await asyncio.wait_for(watch.read(), LIMIT)).status == NOT_SERVING
        assert await readyz_status(client, sidecar) == 503  # asked right after the Watch said so
        assert sidecar.metrics.registry.get_sample_value("serving_sidecar_ready") == 0
        emu.faults.token_outage = False
        assert (await asyncio.wait_for(watch.read(), LIMIT)).status == SERVING  # recovered by the retry
        assert await readyz_status(client, sidecar) == 200


async def test_each_readyz_answer_matches_grpc_check_throughout_start_and_drain(
    emu: Emulator, make_sidecar: SidecarFactory, client: aiohttp.ClientSession, channel_for: list[grpc.aio.Channel]
) -> None:
    emu.faults.token_latency = 0.5
    async with make_sidecar(wait_ready=False, drain_delay=0.5) as sidecar:
        health = health_pb2_grpc.HealthStub(open_channel(sidecar, channel_for))
        pairs: list[tuple[int, int]] = []
        drain: asyncio.Task[None] | None = None
        deadline = time.monotonic() + LIMIT
        while time.monotonic() < deadline and (drain is None or not pairs or pairs[-1][0] == 200):
            pairs.append((await readyz_status(client, sidecar), await check(health)))
            if drain is None and pairs[-1][0] == 200:
                drain = asyncio.create_task(asyncio.to_thread(time.sleep, 0.2))
            elif drain is not None and drain.done() and not sidecar.health().draining:
                sidecar.begin_draining()
        # Asked alternately, the two never contradict each other: the answers in the order they were
        # given flip exactly twice (ready once started, unready once draining). A lagging gRPC health
        # would flip back and forth around each change.
        answers = [ready for r, c in pairs for ready in (r == 200, c == SERVING)]
        flips = [answers[0]] + [b for a, b in itertools.pairwise(answers) if a != b]
        assert flips == [False, True, False], pairs


async def test_a_request_that_is_not_a_protobuf_is_invalid_argument_and_counted(
    make_sidecar: SidecarFactory, channel_for: list[grpc.aio.Channel]
) -> None:
    async with make_sidecar() as sidecar:
        channel = open_channel(sidecar, channel_for)
        for method in ("Invoke", "InvokeStream"):
            raw = channel.unary_unary(f"/{SERVICE}/{method}")  # bytes in, bytes out: no serializer
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await raw(b"\xff\xff\xff\xff\x0f garbage", timeout=LIMIT)
            assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT, failed.value
            assert "not a valid servingsidecar.v1.InvokeRequest" in (failed.value.details() or "")
            metadata = dict(failed.value.trailing_metadata() or ())
            assert metadata.get("error-code") == "BAD_REQUEST"
        sample = {"endpoint": "unresolved", "front": "grpc", "code": "400"}
        assert sidecar.metrics.registry.get_sample_value("serving_sidecar_requests_total", sample) == 2
        ok = await pb_grpc.ServingProxyStub(channel).Invoke(
            pb.InvokeRequest(endpoint="fraud-ro", json_body=b'{"dataframe_records": [{"a": 1}]}'), timeout=LIMIT
        )
        assert ok.json_body  # a valid request on the same channel is served


async def test_calls_shed_by_admission_are_counted_on_both_fronts(
    emu: Emulator, make_sidecar: SidecarFactory, client: aiohttp.ClientSession, channel_for: list[grpc.aio.Channel]
) -> None:
    emu.faults.latency = {"fraud-ro": 3.0}
    body = b'{"dataframe_records": [{"a": 1}]}'
    async with make_sidecar(max_in_flight=1, endpoint=["fraud-ro"]) as sidecar:
        invoke = url(sidecar, "/serving-endpoints/fraud-ro/invocations")
        slow = asyncio.create_task(client.post(invoke, data=body, headers={"Content-Type": "application/json"}))
        deadline = time.monotonic() + LIMIT
        while sidecar.forwarder.admission.total < 1:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        async with client.post(invoke, data=body) as resp:
            assert resp.status == 503 and (await resp.json())["error_code"] == "REQUEST_LIMIT_EXCEEDED"
        stub = pb_grpc.ServingProxyStub(open_channel(sidecar, channel_for))
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await stub.Invoke(pb.InvokeRequest(endpoint="fraud-ro", json_body=body), timeout=LIMIT)
        assert failed.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        async with await slow as resp:
            assert resp.status == 200
        registry = sidecar.metrics.registry
        for front in ("http", "grpc"):
            sample = {"endpoint": "fraud-ro", "front": front, "code": "503"}
            assert registry.get_sample_value("serving_sidecar_requests_total", sample) == 1, front
