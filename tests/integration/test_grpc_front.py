"""The gRPC front against the emulator over real TLS, with a real grpc.aio client and the generated stub."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from proxy._proto.servingsidecar.v1 import serving_proxy_pb2 as pb
from proxy._proto.servingsidecar.v1 import serving_proxy_pb2_grpc as pb_grpc
from proxy.app import Sidecar
from proxy.config import MAX_BODY_BYTES
from proxy.emulator import Emulator
from proxy.errors import ConfigError
from tests.integration.conftest import SidecarFactory, sidecar_settings, url

RECORDS = {"dataframe_records": [{"a": 1, "b": 2.5}, {"a": 10, "b": -1}]}
BODY = json.dumps(RECORDS).encode()
SERVICE = "servingsidecar.v1.ServingProxy"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
async def channel(sidecar: Sidecar) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.port('grpc')}") as opened:
        yield opened


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> pb_grpc.ServingProxyStub:
    return pb_grpc.ServingProxyStub(channel)


def invocations(emu: Emulator, endpoint: str) -> int:
    return sum(emu.counters.snapshot()["invocations"].get(endpoint, {}).values())


async def eventually(condition: Callable[[], bool], seconds: float = 5) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition never became true"
        await asyncio.sleep(0.02)


async def failed(call: Any) -> grpc.aio.AioRpcError:
    """The error a unary call (awaitable) or a streaming call (async iterable) ends with."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        if hasattr(call, "__aiter__"):
            async for _ in call:
                pass
        else:
            await call
    return caught.value


def trailers(error: grpc.aio.AioRpcError) -> dict[str, str]:
    return {key: value for key, value in error.trailing_metadata() or ()}


async def test_invoke_returns_the_same_bytes_as_the_http_front(
    sidecar: Sidecar, stub: pb_grpc.ServingProxyStub, client: aiohttp.ClientSession
) -> None:
    for path, request in [
        ("/serving-endpoints/fraud-ro/invocations", pb.InvokeRequest(endpoint="fraud-ro", json_body=BODY)),
        (
            "/serving-endpoints/fraud-ro/served-models/fraud-ro-1/invocations",
            pb.InvokeRequest(endpoint="fraud-ro", served_model="fraud-ro-1", json_body=BODY),
        ),
        ("/serving-endpoints/features-ro/invocations", pb.InvokeRequest(endpoint="features-ro", json_body=BODY)),
    ]:
        headers = {"Content-Type": "application/json"}
        async with client.post(url(sidecar, path), data=BODY, headers=headers) as resp:
            assert resp.status == 200
            http_body, http_model = await resp.read(), resp.headers["served-model-name"]
        answer = await stub.Invoke(request, timeout=10)
        assert answer.json_body == http_body
        assert answer.served_model_name == http_model
    assert json.loads(answer.json_body)["outputs"]
    metrics = sidecar.metrics.registry
    sample = {"endpoint": "fraud-ro", "front": "grpc", "code": "200"}
    assert metrics.get_sample_value("serving_sidecar_requests_total", sample) == 2
    assert metrics.get_sample_value("serving_sidecar_in_flight_requests", {"front": "grpc"}) == 0


async def test_plain_endpoint_through_grpc(stub: pb_grpc.ServingProxyStub) -> None:
    answer = await stub.Invoke(pb.InvokeRequest(endpoint="plain-model", json_body=b'{"instances": [[1, 2]]}'))
    assert json.loads(answer.json_body) == {"predictions": [3]}


async def test_authorization_metadata_is_ignored_and_request_id_comes_back(stub: pb_grpc.ServingProxyStub) -> None:
    metadata = (("authorization", "Bearer not-a-databricks-token"), ("x-request-id", "req-42"))
    call = stub.Invoke(pb.InvokeRequest(endpoint="fraud-ro", json_body=BODY), metadata=metadata)
    assert json.loads((await call).json_body) == {"predictions": [3.5, 9]}
    assert dict(await call.initial_metadata())["x-request-id"] == "req-42"


async def test_invoke_stream_delivers_its_first_event_long_before_its_last(stub: pb_grpc.ServingProxyStub) -> None:
    words = " ".join(f"w{i}" for i in range(16))
    body = json.dumps({"messages": [{"role": "user", "content": words}], "stream": True}).encode()
    started = time.perf_counter()
    arrivals: list[float] = []
    events: list[bytes] = []
    async for event in stub.InvokeStream(pb.InvokeRequest(endpoint="chat-ro", json_body=body), timeout=30):
        arrivals.append(time.perf_counter() - started)
        events.append(event.data)
    assert len(events) >= 16
    assert b"[DONE]" not in events  # the end of the stream says it
    chunks = [json.loads(data) for data in events]  # each event is one JSON chunk, no `data:` framing
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert arrivals[0] < arrivals[-1] / 3  # relayed as produced, not buffered to the end


async def test_invoke_stream_of_a_plain_answer_is_one_event(stub: pb_grpc.ServingProxyStub) -> None:
    events = [e.data async for e in stub.InvokeStream(pb.InvokeRequest(endpoint="fraud-ro", json_body=BODY))]
    assert [json.loads(data) for data in events] == [{"predictions": [3.5, 9]}]


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (429, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (500, grpc.StatusCode.INTERNAL),
        (502, grpc.StatusCode.UNAVAILABLE),
        (503, grpc.StatusCode.UNAVAILABLE),
        (504, grpc.StatusCode.DEADLINE_EXCEEDED),
    ],
)
async def test_upstream_failures_map_to_grpc_codes(
    emu: Emulator, make_sidecar: SidecarFactory, status: int, code: grpc.StatusCode
) -> None:
    async with (
        make_sidecar(retry_attempts=1) as sidecar,  # no retries: the first answer comes back
        grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.port('grpc')}") as channel,
    ):
        stub = pb_grpc.ServingProxyStub(channel)
        request = pb.InvokeRequest(endpoint="fraud-ro", json_body=BODY)
        for call in (lambda: stub.Invoke(request), lambda: stub.InvokeStream(request)):
            emu.fail_next(1, status, retry_after=1, endpoint="fraud-ro")
            error = await failed(call())
            assert error.code() == code
            assert error.details()  # the upstream's message
            meta = trailers(error)
            assert meta["http-status"] == str(status)
            assert meta["error-code"]  # the Databricks error_code
            assert meta["retry-after"] == "1"
        assert json.loads((await stub.Invoke(request)).json_body) == {"predictions": [3.5, 9]}


async def test_deadline_bounds_the_upstream_request_and_cancels_it(emu: Emulator, sidecar: Sidecar) -> None:
    emu.faults.latency["fraud-ro"] = 5
    async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.port('grpc')}") as channel:
        stub = pb_grpc.ServingProxyStub(channel)
        started = time.perf_counter()
        error = await failed(stub.Invoke(pb.InvokeRequest(endpoint="fraud-ro", json_body=BODY), timeout=1))
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.perf_counter() - started < 4  # not the 5 s the model takes
        # the emulator sees the request go away, well before its 5 s answer
        await eventually(lambda: emu.counters.snapshot()["invocations_cancelled"] == 1, seconds=2)
        assert emu.counters.snapshot()["invocations_in_flight"] == 0
        assert invocations(emu, "fraud-ro") == 0  # never answered
        del emu.faults.latency["fraud-ro"]
        answer = await stub.Invoke(pb.InvokeRequest(endpoint="fraud-ro", json_body=BODY), timeout=5)
        assert json.loads(answer.json_body) == {"predictions": [3.5, 9]}


async def test_cancelling_a_stream_cancels_the_upstream_request(
    emu: Emulator, sidecar: Sidecar, stub: pb_grpc.ServingProxyStub
) -> None:
    words = " ".join(f"w{i}" for i in range(100))  # ~5 s of events
    body = json.dumps({"messages": [{"role": "user", "content": words}], "stream": True}).encode()
    call = stub.InvokeStream(pb.InvokeRequest(endpoint="chat-ro", json_body=body))
    assert (await call.read()).data
    assert emu.counters.snapshot()["invocations_in_flight"] == 1
    call.cancel()
    await eventually(lambda: emu.counters.snapshot()["invocations_in_flight"] == 0, seconds=2)
    assert emu.counters.snapshot()["invocations_cancelled"] == 1
    sample = {"endpoint": "chat-ro", "front": "grpc", "code": "499"}
    await eventually(lambda: sidecar.metrics.registry.get_sample_value("serving_sidecar_requests_total", sample) == 1)


async def test_bad_requests_get_clear_statuses_and_the_server_keeps_serving(
    emu: Emulator, stub: pb_grpc.ServingProxyStub
) -> None:
    error = await failed(stub.Invoke(pb.InvokeRequest(endpoint="", json_body=BODY)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "endpoint is required" in error.details()
    assert trailers(error)["error-code"] == "BAD_REQUEST"

    error = await failed(stub.Invoke(pb.InvokeRequest(endpoint="no-such-model", json_body=BODY)))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "no-such-model" in error.details()
    assert trailers(error)["error-code"] == "RESOURCE_DOES_NOT_EXIST"

    error = await failed(stub.Invoke(pb.InvokeRequest(endpoint="fraud-ro", json_body=b"{not json")))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() and "{" not in error.details()  # the upstream's message, not its JSON
    assert trailers(error)["error-code"] == "BAD_REQUEST"

    before = invocations(emu, "fraud-ro")
    error = await failed(stub.Invoke(pb.InvokeRequest(endpoint="fraud-ro", json_body=b"x" * (MAX_BODY_BYTES + 1))))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # refused by the sidecar: over 16 MiB of JSON
    assert trailers(error)["error-code"] == "REQUEST_ENTITY_TOO_LARGE"
    error = await failed(stub.Invoke(pb.InvokeRequest(endpoint="fraud-ro", json_body=b"x" * (17 * 1024 * 1024))))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # refused by grpc itself: over the message limit
    assert invocations(emu, "fraud-ro") == before  # nothing oversized went upstream

    answer = await stub.Invoke(pb.InvokeRequest(endpoint="fraud-ro", json_body=BODY))
    assert json.loads(answer.json_body) == {"predictions": [3.5, 9]}


async def test_reflection_lists_and_describes_the_service(channel: grpc.aio.Channel) -> None:
    call = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo()
    await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
    listed = {service.name for service in (await call.read()).list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= listed
    await call.write(reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE))
    answer = await call.read()
    await call.done_writing()
    proto = descriptor_pb2.FileDescriptorProto.FromString(answer.file_descriptor_response.file_descriptor_proto[0])
    assert proto.name == "servingsidecar/v1/serving_proxy.proto"
    assert [method.name for method in proto.service[0].method] == ["Invoke", "InvokeStream"]


def call_through_reflection(port: int, request_json: str) -> dict[str, Any]:
    """What a generic tool (grpcurl) does: learn the types from the server, then call with JSON."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        method = pool.FindServiceByName(SERVICE).methods_by_name["Invoke"]
        request_type = message_factory.GetMessageClass(method.input_type)
        response_type = message_factory.GetMessageClass(method.output_type)
        invoke = channel.unary_unary(
            f"/{SERVICE}/Invoke",
            request_serializer=request_type.SerializeToString,
            response_deserializer=response_type.FromString,
        )
        answer = invoke(json_format.Parse(request_json, request_type()), timeout=10)
        return json_format.MessageToDict(answer)


async def test_a_generic_client_can_call_through_reflection(sidecar: Sidecar) -> None:
    request_json = json.dumps({"endpoint": "fraud-ro", "json_body": base64.b64encode(BODY).decode()})
    answer = await asyncio.to_thread(call_through_reflection, sidecar.port("grpc"), request_json)
    assert json.loads(base64.b64decode(answer["jsonBody"])) == {"predictions": [3.5, 9]}
    assert answer["servedModelName"] == "fraud-ro-1"


async def test_health_is_not_serving_until_ready_then_serving_then_not_serving_from_drain(
    emu: Emulator, tmp_path: Path
) -> None:
    ca_file = tmp_path / "ca.pem"
    emu.write_ca(ca_file)
    emu.faults.token_latency = 1.0  # the first token takes a second: not ready meanwhile
    sidecar = Sidecar(sidecar_settings(emu, ca_file))
    await sidecar.start()
    stopping: asyncio.Task[None] | None = None
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.port('grpc')}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", SERVICE):
                assert (await health.Check(health_pb2.HealthCheckRequest(service=service))).status == NOT_SERVING
            unknown = await failed(health.Check(health_pb2.HealthCheckRequest(service="no.such.Service")))
            assert unknown.code() == grpc.StatusCode.NOT_FOUND
            watch = health.Watch(health_pb2.HealthCheckRequest(service=SERVICE))
            other_watch = health.Watch(health_pb2.HealthCheckRequest(service=SERVICE))
            assert (await watch.read()).status == NOT_SERVING
            assert (await watch.read()).status == SERVING
            assert sidecar.health().ready
            assert (await health.Check(health_pb2.HealthCheckRequest())).status == SERVING
            other_watch.cancel()  # one watcher leaving does not silence the others
            stopping = asyncio.get_running_loop().create_task(sidecar.stop())
            assert (await watch.read()).status == NOT_SERVING
            assert await watch.read() is grpc.aio.EOF  # the Watch ends, so it does not hold up the stop
            await asyncio.wait_for(stopping, 5)
    finally:
        if stopping is None:
            await sidecar.stop()


async def test_a_taken_grpc_port_fails_the_start(emu: Emulator, sidecar: Sidecar, tmp_path: Path) -> None:
    port = sidecar.port("grpc")
    assert port > 0 and port not in (sidecar.port("http"), sidecar.port("admin"))
    ca_file = tmp_path / "ca.pem"
    emu.write_ca(ca_file)
    second = Sidecar(sidecar_settings(emu, ca_file, grpc_listen=f"127.0.0.1:{port}"))
    try:
        with pytest.raises(
            ConfigError, match=f"grpc-listen: cannot listen on 127.0.0.1:{port}: Address already in use"
        ):
            await second.start()  # fails instead of silently sharing the port (SO_REUSEPORT is off)
    finally:
        await second.stop()


async def test_a_retry_wait_longer_than_the_deadline_returns_the_upstreams_429(
    emu: Emulator, stub: pb_grpc.ServingProxyStub
) -> None:
    emu.fail_next(1, 429, retry_after=5, endpoint="fraud-ro")  # within the 10 s retry budget, not the deadline
    error = await failed(stub.Invoke(pb.InvokeRequest(endpoint="fraud-ro", json_body=BODY), timeout=2))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert trailers(error)["retry-after"] == "5"
    emu.fail_next(1, 429, retry_after=1, endpoint="fraud-ro")  # fits the deadline: waited and retried
    answer = await stub.Invoke(pb.InvokeRequest(endpoint="fraud-ro", json_body=BODY), timeout=5)
    assert json.loads(answer.json_body) == {"predictions": [3.5, 9]}
