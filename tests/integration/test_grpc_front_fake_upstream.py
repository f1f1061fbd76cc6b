"""The gRPC front over real loopback sockets, in front of a fake forwarder: every status, metadata, limits.

The emulator answers only some statuses; here the upstream answer is whatever a test says, so every row
of the mapping table is checked through a real grpc.aio client, trailing metadata included.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import grpc
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from proxy._proto.servingsidecar.v1 import serving_proxy_pb2 as pb
from proxy._proto.servingsidecar.v1 import serving_proxy_pb2_grpc as pb_grpc
from proxy.config import MAX_BODY_BYTES, Address
from proxy.downstream.grpc import GrpcFront
from proxy.errors import NoCredential, SidecarError
from proxy.forwarding import Invocation, default_headers
from proxy.metrics import Metrics
from proxy.readiness import Health, Readiness
from tests.unit.test_grpc_mapping import ISSUE_TABLE


@dataclass
class FakeReply:
    status: int = 200
    body: list[bytes] = field(default_factory=lambda: [b"{}"])
    header_items: dict[str, str] = field(default_factory=dict)
    hang: bool = False  # after the body, wait forever (a slow model)
    closed: bool = False

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        return CIMultiDictProxy(CIMultiDict(self.header_items))

    async def chunks(self) -> AsyncIterator[bytes]:
        for chunk in self.body:
            yield chunk
        if self.hang:
            await asyncio.Event().wait()

    async def read(self) -> bytes:
        return b"".join([c async for c in self.chunks()])

    def close(self) -> None:
        self.closed = True


@dataclass
class FakeForwarder:
    reply: FakeReply = field(default_factory=FakeReply)
    error: SidecarError | None = None
    calls: list[Invocation] = field(default_factory=list)

    @contextlib.contextmanager
    def admit(self, endpoint: str) -> Iterator[None]:
        yield

    @contextlib.asynccontextmanager
    async def invoke(self, call: Invocation) -> AsyncIterator[FakeReply]:
        self.calls.append(call)
        if self.error is not None:
            raise self.error
        try:
            yield self.reply
        finally:
            self.reply.close()


@dataclass
class Harness:
    forwarder: FakeForwarder
    front: GrpcFront
    stub: pb_grpc.ServingProxyStub
    metrics: Metrics


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    forwarder = FakeForwarder()
    metrics = Metrics()
    readiness = Readiness(lambda: Health(started=True, listening=True, credential_ok=True, draining=False))
    front = GrpcFront(forwarder, lambda record: metrics.observe_request(record, record.endpoint), readiness)
    port = await front.start(Address("127.0.0.1", 0))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Harness(forwarder, front, pb_grpc.ServingProxyStub(channel), metrics)
    finally:
        await channel.close()
        await front.stop(grace=0)


REQUEST = pb.InvokeRequest(endpoint="fraud-ro", json_body=b'{"inputs": [1]}')

STATUS_TABLE = ISSUE_TABLE  # the issue's mapping, kept once in the unit test


@pytest.mark.parametrize("method", ["Invoke", "InvokeStream"])
async def test_every_upstream_status_maps_with_message_and_error_code(harness: Harness, method: str) -> None:
    for status, code in STATUS_TABLE.items():
        harness.forwarder.reply = FakeReply(
            status=status,
            body=[b'{"error_code": "CODE_', str(status).encode(), b'", "message": "upstream says ', b'no"}'],
            header_items={"Retry-After": "2"} if status in (429, 503) else {},
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            if method == "Invoke":
                await harness.stub.Invoke(REQUEST, metadata=[("x-request-id", f"r-{status}")])
            else:
                async for _ in harness.stub.InvokeStream(REQUEST, metadata=[("x-request-id", f"r-{status}")]):
                    pass
        error = caught.value
        assert error.code() == code, status
        assert error.details() == "upstream says no"
        trailers = dict(error.trailing_metadata())
        assert trailers["error-code"] == f"CODE_{status}"
        assert trailers["http-status"] == str(status)
        assert trailers["x-request-id"] == f"r-{status}"
        assert trailers.get("retry-after") == ("2" if status in (429, 503) else None)
        assert harness.forwarder.reply.closed


async def test_sidecar_errors_map_the_same_way(harness: Harness) -> None:
    harness.forwarder.error = NoCredential("no usable token yet: temporarily_unavailable", retry_after=1)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await harness.stub.Invoke(REQUEST)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert caught.value.details() == "no usable token yet: temporarily_unavailable"
    assert dict(caught.value.trailing_metadata())["error-code"] == "TEMPORARILY_UNAVAILABLE"
    assert dict(caught.value.trailing_metadata())["retry-after"] == "1"


async def test_success_carries_body_served_model_and_request_id(harness: Harness) -> None:
    harness.forwarder.reply = FakeReply(
        body=[b'{"predictions"', b": [1]}"],
        header_items={"served-model-name": "fraud-ro-1", "x-request-id": "up-1"},
    )
    call = harness.stub.Invoke(REQUEST, metadata=[("authorization", "Bearer caller-token"), ("x-request-id", "mine")])
    answer = await call
    assert answer.json_body == b'{"predictions": [1]}'
    assert answer.served_model_name == "fraud-ro-1"
    assert dict(await call.initial_metadata())["x-request-id"] == "up-1"
    call = harness.forwarder.calls[-1]
    assert (call.request_id, call.headers) == ("mine", default_headers(False, False))  # authorization dropped


async def test_stream_relays_event_data_and_drops_done(harness: Harness) -> None:
    harness.forwarder.reply = FakeReply(
        body=[b'data: {"a"', b": 1}\n\ndata: {", b'"b": 2}\n\n: comment\n\ndata: [DONE]\n\n'],
        header_items={"Content-Type": "text/event-stream; charset=utf-8"},
    )
    events = [event.data async for event in harness.stub.InvokeStream(REQUEST)]
    assert events == [b'{"a": 1}', b'{"b": 2}']


async def test_stream_of_a_plain_answer_is_one_event(harness: Harness) -> None:
    harness.forwarder.reply = FakeReply(body=[b'{"predictions"', b": [1]}"])
    events = [event.data async for event in harness.stub.InvokeStream(REQUEST)]
    assert events == [b'{"predictions": [1]}']


@pytest.mark.parametrize("method", ["Invoke", "InvokeStream"])
async def test_an_answer_over_the_limit_is_resource_exhausted(harness: Harness, method: str) -> None:
    harness.forwarder.reply = FakeReply(body=[b"x" * (1024 * 1024)] * 17)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        if method == "Invoke":
            await harness.stub.Invoke(REQUEST)
        else:
            async for _ in harness.stub.InvokeStream(REQUEST):
                pass
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert dict(caught.value.trailing_metadata())["error-code"] == "RESPONSE_TOO_LARGE"


async def test_an_answer_at_the_limit_gets_through(harness: Harness) -> None:
    harness.forwarder.reply = FakeReply(body=[b"x" * MAX_BODY_BYTES])
    channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{harness.front.port}", options=[("grpc.max_receive_message_length", 32 * 1024 * 1024)]
    )
    async with channel:
        answer = await pb_grpc.ServingProxyStub(channel).Invoke(REQUEST)
    assert len(answer.json_body) == MAX_BODY_BYTES


async def test_deadline_cancels_the_upstream_exchange(harness: Harness) -> None:
    harness.forwarder.reply = FakeReply(body=[], hang=True)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await harness.stub.Invoke(REQUEST, timeout=0.3)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await _eventually(lambda: harness.forwarder.reply.closed)
    assert _count(harness.metrics, "504") == 1


async def test_client_cancel_closes_the_upstream_stream(harness: Harness) -> None:
    harness.forwarder.reply = FakeReply(
        body=[b"data: 1\n\n"], hang=True, header_items={"Content-Type": "text/event-stream"}
    )
    call = harness.stub.InvokeStream(REQUEST)
    assert (await call.read()).data == b"1"
    assert not harness.forwarder.reply.closed
    call.cancel()
    await _eventually(lambda: harness.forwarder.reply.closed)
    await _eventually(lambda: _count(harness.metrics, "499") == 1)


async def _eventually(condition: object, seconds: float = 5) -> None:
    for _ in range(int(seconds / 0.02)):
        if condition():  # type: ignore[operator]
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition never became true")


def _count(metrics: Metrics, code: str) -> float:
    value = metrics.registry.get_sample_value(
        "serving_sidecar_requests_total", {"endpoint": "fraud-ro", "front": "grpc", "code": code}
    )
    return value or 0.0
