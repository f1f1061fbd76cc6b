"""gRPC front: `servingsidecar.v1.ServingProxy` on grpc.aio, with `grpc.health.v1.Health` and reflection.

Rules:
1. One forwarding path: an InvokeRequest becomes the `Invocation` the HTTP front would build and goes
   through the same `Forwarder`. Bodies are bytes and are not parsed; only an error answer's JSON is read,
   for its `message` and `error_code`.
2. A call that fails ends with the gRPC code mapped from its HTTP status (`errors.grpc_code_for_status`),
   whether the upstream answered that status or the sidecar raised a `SidecarError` with it (which may
   name its own code: shedding is a 503 but RESOURCE_EXHAUSTED, as `Overloaded.grpc_code` says). The status
   message is the Databricks `message`; trailing metadata carries `error-code` (the Databricks
   `error_code`), `http-status`, `retry-after` (when given) and `x-request-id` (when known).
3. The call's deadline bounds the whole upstream exchange, reading the answer included. A cancelled call
   (or a passed deadline) cancels the handler task; leaving `Forwarder.invoke`'s block closes the upstream
   response, so the upstream sees the request go away.
4. Messages hold at most MAX_BODY_BYTES of JSON both ways, like the HTTP front: grpc itself refuses a
   larger request frame (RESOURCE_EXHAUSTED), and a larger answer or event is refused here the same way.
5. Metadata in: only `x-request-id` is passed upstream; a client's `authorization` (and grpc's own
   `content-type`, `te`, `user-agent`...) is not. Metadata out: `x-request-id`, the upstream's or the caller's.
6. Streams relay the data of each server-sent event as one InvokeEvent as soon as it is complete; the
   `[DONE]` terminator is not relayed (the end of the stream says it). An answer that is not an event
   stream is relayed as one event.
7. Health (`downstream.health`) follows the sidecar's readiness, polled every READINESS_POLL seconds, for
   "" and ServingProxy: NOT_SERVING until ready, SERVING while ready, NOT_SERVING for good once draining
   or stopping begins. Reflection lists ServingProxy, Health and itself.
8. Only the gRPC modules import grpc; grpc's own failures (a port that cannot be bound) become OSError here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_reflection.v1alpha import reflection

from proxy import logs, routing
from proxy._proto.servingsidecar.v1 import serving_proxy_pb2 as pb
from proxy._proto.servingsidecar.v1 import serving_proxy_pb2_grpc as pb_grpc
from proxy.config import MAX_BODY_BYTES, ListenAddress, UnixAddress
from proxy.downstream import unix
from proxy.downstream.health import SERVICE_NAME as HEALTH_SERVICE_NAME
from proxy.downstream.health import HealthService
from proxy.downstream.sse import SseSplitter
from proxy.errors import InvalidRequest, ResponseTooLarge, SidecarError, grpc_code_for_status
from proxy.forwarding import Forwarder, Invocation
from proxy.metrics import Metrics
from proxy.upstream import Reply

FRONT = "grpc"
SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["ServingProxy"].full_name
# The JSON limit plus room for the other fields and protobuf framing: a request refused for size by grpc
# itself is over the JSON limit for sure; one just over it reaches Forwarder, which refuses it (413).
MESSAGE_LIMIT = MAX_BODY_BYTES + 64 * 1024
SERVER_OPTIONS = (
    ("grpc.max_receive_message_length", MESSAGE_LIMIT),
    ("grpc.max_send_message_length", MESSAGE_LIMIT),
    ("grpc.so_reuseport", 0),  # a second sidecar on the same port must fail to bind, not share the port
)
READINESS_POLL = 0.2  # seconds
STOP_GRACE = 10.0  # seconds in-flight calls may finish once stop begins
PASSED_METADATA = frozenset({"x-request-id"})
ERROR_CODE_KEY = "error-code"
EVENT_STREAM = "text/event-stream"
DONE = b"[DONE]"
_MAX_TEXT_MESSAGE = 2048  # characters of a non-JSON error body kept as the status message

LabelFor = Callable[[str], str]
Ready = Callable[[], bool]


@dataclass(frozen=True)
class Failure:
    """How a failed call ends (rule 2): pure data, turned into `context.abort` at the edge."""

    status: int  # the HTTP status it stands for
    message: str
    error_code: str | None = None
    retry_after: str | None = None
    grpc_code: str | None = None  # a StatusCode name that overrides the status's mapping

    @property
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode[self.grpc_code or grpc_code_for_status(self.status)]

    def trailing_metadata(self, request_id: str | None) -> tuple[tuple[str, str], ...]:
        pairs = [
            (ERROR_CODE_KEY, self.error_code),
            ("http-status", str(self.status)),
            ("retry-after", self.retry_after),
            ("x-request-id", request_id),
        ]
        return tuple((key, value) for key, value in pairs if value)


class _Failed(Exception):
    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


def failure_from_error(error: SidecarError) -> Failure:
    retry_after = None if error.retry_after is None else str(error.retry_after)
    return Failure(error.status, error.message, error.error_code, retry_after, error.grpc_code)


def failure_from_reply(status: int, body: bytes, *, retry_after: str | None = None) -> Failure:
    """An upstream error answer: its Databricks `message` and `error_code`, or failing that its text."""
    message, error_code = _databricks_error(body)
    if not message:
        message = body.decode("utf-8", errors="replace").strip()[:_MAX_TEXT_MESSAGE]
    return Failure(status, message or f"the endpoint answered HTTP {status}", error_code, retry_after)


def _databricks_error(body: bytes) -> tuple[str | None, str | None]:
    try:
        parsed = json.loads(body)
    except ValueError:
        return None, None
    if not isinstance(parsed, dict):
        return None, None
    message, error_code = parsed.get("message"), parsed.get("error_code")
    return (message if isinstance(message, str) else None), (error_code if isinstance(error_code, str) else None)


def deadline_failure(seconds: float | None) -> Failure:
    budget = "" if seconds is None else f" ({seconds:.3g} s)"
    return Failure(504, f"the call's deadline{budget} passed before the endpoint finished", "DEADLINE_EXCEEDED")


def passed_metadata(metadata: Iterable[tuple[str, str | bytes]]) -> list[tuple[str, str]]:
    """The caller's metadata sent upstream as headers (rule 5)."""
    return [
        (key.lower(), value) for key, value in metadata if key.lower() in PASSED_METADATA and isinstance(value, str)
    ]


def invocation_for(
    request: pb.InvokeRequest, metadata: Iterable[tuple[str, str | bytes]], *, time_remaining: float | None = None
) -> Invocation:
    """The Invocation for a request, or InvalidRequest naming the field at fault."""
    if not request.endpoint:
        raise InvalidRequest("endpoint is required: the name of the serving endpoint to call")
    if not routing.is_valid_name(request.endpoint):
        raise InvalidRequest(
            f"endpoint {request.endpoint[:80]!r} is not an endpoint name (letters, digits, - and _, at most 64)"
        )
    if request.served_model and not routing.is_valid_name(request.served_model):
        raise InvalidRequest(
            f"served_model {request.served_model[:80]!r} is not a served model name "
            "(letters, digits, - and _, at most 64)"
        )
    return Invocation(
        endpoint=request.endpoint,
        body=request.json_body,
        served_model=request.served_model or None,
        headers=passed_metadata(metadata),
        request_id=logs.request_id(),
        deadline=None if time_remaining is None else time.monotonic() + time_remaining,
    )


def is_event_stream(reply: Reply) -> bool:
    return reply.headers.get("Content-Type", "").lower().startswith(EVENT_STREAM)


async def read_bounded(reply: Reply) -> bytes:
    """The whole answer, or ResponseTooLarge as soon as it passes MAX_BODY_BYTES (rule 4)."""
    parts: list[bytes] = []
    size = 0
    async for chunk in reply.chunks():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ResponseTooLarge(_too_large("answer", size))
        parts.append(chunk)
    return b"".join(parts)


async def event_data(reply: Reply) -> AsyncIterator[bytes]:
    """The data of each event of a streamed answer as it completes (rule 6)."""
    if not is_event_stream(reply):
        body = await read_bounded(reply)
        if body:
            yield body
        return
    splitter = SseSplitter()
    async for chunk in reply.chunks():
        for data in splitter.feed(chunk):
            if data != DONE:
                yield data
        if splitter.pending_bytes > MAX_BODY_BYTES:
            raise ResponseTooLarge(_too_large("event", splitter.pending_bytes))
    for data in splitter.close():
        if data != DONE:
            yield data


def _too_large(what: str, size: int) -> str:
    return (
        f"the endpoint's {what} reached {size} bytes; a gRPC message carries at most {MAX_BODY_BYTES} bytes "
        "of JSON (use the HTTP front for larger answers)"
    )


@dataclass
class _Call:
    """What one call's ending needs to know, filled in as the call goes."""

    request_id: str
    status: int | str = "error"

    def saw(self, reply: Reply) -> None:
        self.request_id = reply.headers.get("x-request-id", self.request_id)

    def initial_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("x-request-id", self.request_id),)


class ServingProxyService:
    """The ServingProxy RPCs (method names are the proto's)."""

    def __init__(self, forwarder: Forwarder, metrics: Metrics, label_for: LabelFor) -> None:
        self._forwarder = forwarder
        self._metrics = metrics
        self._label_for = label_for
        metrics.in_flight.labels(front=FRONT)  # exported as 0 from the start, not from the first call

    def __repr__(self) -> str:
        return f"ServingProxyService({self._forwarder!r})"

    async def Invoke(self, request: pb.InvokeRequest, context: Any) -> pb.InvokeResponse:
        async with self._call(request.endpoint, context) as call:
            async with self._forward(request, context) as reply:
                call.saw(reply)
                body = await read_bounded(reply)
                _raise_for_status(reply, body)
            await context.send_initial_metadata(call.initial_metadata())
            return pb.InvokeResponse(json_body=body, served_model_name=reply.headers.get("served-model-name", ""))
        raise AssertionError("unreachable: _call ends a failed call by aborting it")

    async def InvokeStream(self, request: pb.InvokeRequest, context: Any) -> AsyncIterator[pb.InvokeEvent]:
        async with self._call(request.endpoint, context) as call, self._forward(request, context) as reply:
            call.saw(reply)
            if not 200 <= reply.status < 300:
                _raise_for_status(reply, await read_bounded(reply))
            await context.send_initial_metadata(call.initial_metadata())
            async for data in event_data(reply):
                yield pb.InvokeEvent(data=data)

    @contextlib.asynccontextmanager
    async def _forward(self, request: pb.InvokeRequest, context: Any) -> AsyncIterator[Reply]:
        """The shared forwarding path, admitted like an HTTP request."""
        call = invocation_for(request, context.invocation_metadata(), time_remaining=context.time_remaining())
        with self._forwarder.admit(call.endpoint):
            async with self._forwarder.invoke(call) as reply:
                yield reply

    @contextlib.asynccontextmanager
    async def _call(self, endpoint: str, context: Any) -> AsyncIterator[_Call]:
        """Deadline, metrics and the ending of one call: every failure becomes its status (rules 2, 3)."""
        started = time.perf_counter()
        remaining: float | None = context.time_remaining()
        call = _Call(request_id=logs.request_id_from(_request_id(context.invocation_metadata())))
        failure: Failure | None = None
        in_flight = self._metrics.in_flight.labels(front=FRONT)
        in_flight.inc()
        try:
            # the same request id rules as the HTTP front: honoured or generated, in logs, upstream and back
            with logs.bound_request_id(call.request_id):
                async with asyncio.timeout(remaining):
                    yield call
            call.status = 200
        except _Failed as failed:
            failure = failed.failure
        except SidecarError as error:
            failure = failure_from_error(error)
        except TimeoutError:
            failure = deadline_failure(remaining)
        except (asyncio.CancelledError, GeneratorExit):
            deadline_passed = remaining is not None and time.perf_counter() - started >= remaining
            call.status = 504 if deadline_passed else 499
            raise
        finally:
            in_flight.dec()
            status = failure.status if failure is not None else call.status
            seconds = time.perf_counter() - started
            self._metrics.observe_request(endpoint=self._label_for(endpoint), front=FRONT, code=status, seconds=seconds)
        if failure is not None:
            await context.abort(failure.code, failure.message, failure.trailing_metadata(call.request_id))


def _raise_for_status(reply: Reply, body: bytes) -> None:
    if not 200 <= reply.status < 300:
        raise _Failed(failure_from_reply(reply.status, body, retry_after=reply.headers.get("Retry-After")))


def _request_id(metadata: Iterable[tuple[str, str | bytes]]) -> str | None:
    return next((value for key, value in passed_metadata(metadata) if key == "x-request-id"), None)


class GrpcFront:
    """The gRPC listener: ServingProxy, health checking and reflection on one grpc.aio server.

    Fits the sidecar's listener shape: `port` once started, `stop(grace)`, and a synchronous
    `begin_draining()` for the moment draining starts.
    """

    def __init__(self, forwarder: Forwarder, metrics: Metrics, label_for: LabelFor, ready: Ready) -> None:
        self.service = ServingProxyService(forwarder, metrics, label_for)
        self.health = HealthService([SERVICE_NAME])  # NOT_SERVING until the first readiness check (rule 7)
        self._ready = ready
        self._server: Any = None
        self._follower: asyncio.Task[None] | None = None
        self._socket_file: unix.SocketFile | None = None
        self.port = 0  # stays 0 on a Unix socket

    def __repr__(self) -> str:
        state = "stopped" if self._server is None else f"port={self.port}"
        return f"GrpcFront({state}, {self.health!r})"

    async def start(self, address: ListenAddress, *, socket_mode: int = 0o660, socket_group: int | None = None) -> int:
        """Bind `address` (port 0: any free port; a Unix socket gets `socket_mode` and `socket_group`
        before serving starts), start serving; return the bound port (0 for a Unix socket)."""
        server = grpc.aio.server(options=SERVER_OPTIONS)
        pb_grpc.add_ServingProxyServicer_to_server(self.service, server)
        self.health.add_to(server)
        reflection.enable_server_reflection((SERVICE_NAME, HEALTH_SERVICE_NAME, reflection.SERVICE_NAME), server)
        if isinstance(address, UnixAddress):
            unix.claim(address.path)
            with unix.private_umask():  # grpc makes the file itself: owner-only until secured
                _bind(server, address)
            self._socket_file = unix.secure(address.path, mode=socket_mode, group=socket_group)
        else:
            self.port = _bind(server, address)
        await server.start()
        self._server = server
        self._follower = asyncio.get_running_loop().create_task(self._follow_readiness())
        return self.port

    def begin_draining(self) -> None:
        """NOT_SERVING for good, at once; calls keep being served until `stop`."""
        self.health.shut_down()

    async def stop(self, grace: float = STOP_GRACE) -> None:
        """NOT_SERVING, refuse new calls, give calls in flight `grace` seconds, then cancel them."""
        self.begin_draining()
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
            self._follower = None
        if self._server is not None:
            server, self._server = self._server, None
            await server.stop(grace)
        if self._socket_file is not None:
            self._socket_file.remove()
            self._socket_file = None

    async def _follow_readiness(self) -> None:
        while True:
            self.health.set(self._ready())
            await asyncio.sleep(READINESS_POLL)


def _bind(server: Any, address: ListenAddress) -> int:
    try:
        port = int(server.add_insecure_port(str(address)))
    except RuntimeError as exc:
        raise OSError(f"grpc-listen: cannot listen on {address}: {exc}") from exc
    if port == 0:
        raise OSError(f"grpc-listen: cannot listen on {address}")
    return port
