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
7. Health (`downstream.health`) follows the sidecar's `Readiness` (proxy/readiness.py) for "" and
   ServingProxy: it is set by readiness events, and a Check or a new Watch recomputes readiness first, so
   it says what /readyz says at every instant. NOT_SERVING until ready, SERVING while ready, NOT_SERVING
   for good once draining or stopping begins. Reflection lists ServingProxy, Health and itself.
8. Only the gRPC modules import grpc; a listen address that cannot be bound is a ConfigError naming
   `grpc-listen`.
9. A request that does not decode as an InvokeRequest is INVALID_ARGUMENT (the caller's mistake), answered
   and counted like any refused call: the decoder hands the handler a `Undecodable` instead of raising,
   since grpc answers UNKNOWN for a deserializer's exception and counts nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from google.protobuf.message import DecodeError
from grpc_reflection.v1alpha import reflection

from proxy import logs, routing
from proxy._proto.servingsidecar.v1 import serving_proxy_pb2 as pb
from proxy.config import MAX_BODY_BYTES, Address, ListenAddress, UnixAddress
from proxy.downstream import unix
from proxy.downstream.health import SERVICE_NAME as HEALTH_SERVICE_NAME
from proxy.downstream.health import HealthService
from proxy.downstream.sse import SseSplitter
from proxy.errors import ConfigError, InvalidRequest, ResponseTooLarge, SidecarError, grpc_code_for_status
from proxy.forwarding import Invocation, RequestHook, RequestRecord, header_block
from proxy.readiness import Health
from proxy.transport import Reply

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
STOP_GRACE = 10.0  # seconds in-flight calls may finish once stop begins
PASSED_METADATA = frozenset({"x-request-id"})
ERROR_CODE_KEY = "error-code"
EVENT_STREAM = "text/event-stream"
DONE = b"[DONE]"
_MAX_TEXT_MESSAGE = 2048  # characters of a non-JSON error body kept as the status message


class ReadinessSource(Protocol):
    """What the front needs of `proxy.readiness.Readiness`."""

    def subscribe(self, subscriber: Callable[[Health], None]) -> None: ...

    def current(self) -> Health: ...


@dataclass(frozen=True)
class Undecodable:
    """A request body that is not an InvokeRequest protobuf (rule 9). Empty fields, like a blank request."""

    error: str
    endpoint: str = ""
    served_model: str = ""
    json_body: bytes = b""


Request = pb.InvokeRequest | Undecodable


def decode_request(raw: bytes) -> Request:
    """The request deserializer: never raises (rule 9)."""
    try:
        request: pb.InvokeRequest = pb.InvokeRequest.FromString(raw)
    except DecodeError as exc:
        return Undecodable(str(exc)[:200] or "malformed protobuf")
    return request


class Invoker(Protocol):
    """What the gRPC front needs of the forwarder."""

    def admit(self, endpoint: str) -> contextlib.AbstractContextManager[None]: ...

    def invoke(self, call: Invocation) -> contextlib.AbstractAsyncContextManager[Reply]: ...


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
    request: Request, metadata: Iterable[tuple[str, str | bytes]], *, time_remaining: float | None = None
) -> Invocation:
    """The Invocation for a request, or InvalidRequest naming the field at fault."""
    if isinstance(request, Undecodable):
        raise InvalidRequest(f"the request is not a valid {pb.InvokeRequest.DESCRIPTOR.full_name}: {request.error}")
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
    passed = passed_metadata(metadata)
    return Invocation(
        endpoint=request.endpoint,
        body=request.json_body,
        served_model=request.served_model or None,
        headers=header_block(passed),
        request_id=logs.request_id() or logs.request_id_from(_request_id(passed)),
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

    def __init__(self, forwarder: Invoker, on_request: RequestHook) -> None:
        self._forwarder = forwarder
        self._on_request = on_request
        self.in_flight = 0

    def __repr__(self) -> str:
        return f"ServingProxyService({self._forwarder!r})"

    async def Invoke(self, request: Request, context: Any) -> pb.InvokeResponse:
        async with self._call(request.endpoint, context) as call:
            async with self._forward(request, context) as reply:
                call.saw(reply)
                body = await read_bounded(reply)
                _raise_for_status(reply, body)
            await context.send_initial_metadata(call.initial_metadata())
            return pb.InvokeResponse(json_body=body, served_model_name=reply.headers.get("served-model-name", ""))
        raise AssertionError("unreachable: _call ends a failed call by aborting it")

    async def InvokeStream(self, request: Request, context: Any) -> AsyncIterator[pb.InvokeEvent]:
        async with self._call(request.endpoint, context) as call, self._forward(request, context) as reply:
            call.saw(reply)
            if not 200 <= reply.status < 300:
                _raise_for_status(reply, await read_bounded(reply))
            await context.send_initial_metadata(call.initial_metadata())
            async for data in event_data(reply):
                yield pb.InvokeEvent(data=data)

    @contextlib.asynccontextmanager
    async def _forward(self, request: Request, context: Any) -> AsyncIterator[Reply]:
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
        self.in_flight += 1
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
            self.in_flight -= 1
            status = failure.status if failure is not None else call.status
            seconds = time.perf_counter() - started
            self._on_request(RequestRecord(FRONT, "POST", "", endpoint, status, seconds, None, call.request_id))
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

    def __init__(self, forwarder: Invoker, on_request: RequestHook, readiness: ReadinessSource) -> None:
        self.service = ServingProxyService(forwarder, on_request)
        # NOT_SERVING until readiness says otherwise (rule 7)
        self.health = HealthService([SERVICE_NAME], refresh=readiness.current)
        self._readiness = readiness
        readiness.subscribe(lambda health: self.health.set(health.ready))
        self._server: Any = None
        self._socket_file: unix.SocketFile | None = None
        self.port = 0  # stays 0 on a Unix socket

    @property
    def in_flight(self) -> int:
        return self.service.in_flight

    def __repr__(self) -> str:
        state = "stopped" if self._server is None else f"port={self.port}"
        return f"GrpcFront({state}, {self.health!r})"

    async def start(self, address: ListenAddress, *, socket_mode: int = 0o660, socket_group: int | None = None) -> int:
        """Bind `address` (port 0: any free port; a Unix socket gets `socket_mode` and `socket_group`
        before serving starts), start serving; return the bound port (0 for a Unix socket)."""
        server = grpc.aio.server(options=SERVER_OPTIONS)
        _add_serving_proxy(self.service, server)
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
        self.health.set(self._readiness.current().ready)
        return self.port

    def begin_draining(self) -> None:
        """NOT_SERVING for good, at once; calls keep being served until `stop`."""
        self.health.shut_down()

    async def stop(self, grace: float = STOP_GRACE) -> None:
        """NOT_SERVING, refuse new calls, give calls in flight `grace` seconds, then cancel them."""
        self.begin_draining()
        if self._server is not None:
            server, self._server = self._server, None
            await server.stop(grace)
        if self._socket_file is not None:
            self._socket_file.remove()
            self._socket_file = None


def _add_serving_proxy(service: ServingProxyService, server: Any) -> None:
    """The generated `add_ServingProxyServicer_to_server`, with the never-raising decoder of rule 9."""
    handlers = {
        "Invoke": grpc.unary_unary_rpc_method_handler(
            service.Invoke,
            request_deserializer=decode_request,
            response_serializer=pb.InvokeResponse.SerializeToString,
        ),
        "InvokeStream": grpc.unary_stream_rpc_method_handler(
            service.InvokeStream,
            request_deserializer=decode_request,
            response_serializer=pb.InvokeEvent.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


def _bind(server: Any, address: ListenAddress) -> int:
    if isinstance(address, Address):
        _probe(address)
    try:
        port = int(server.add_insecure_port(str(address)))
    except RuntimeError as exc:
        raise ConfigError(f"grpc-listen: cannot listen on {address}: {_bind_reason(exc)}") from None
    if port == 0:
        raise ConfigError(f"grpc-listen: cannot listen on {address} (address in use or not available)")
    return port


def _probe(address: Address) -> None:
    """Try the address with a plain socket first: for a taken port grpc only logs a C-level line on stderr
    and raises a vague error, and a configuration error must be one clear line (rule 8)."""
    if address.port == 0:
        return
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address.host, address.port))
        except OSError as exc:
            raise ConfigError(f"grpc-listen: cannot listen on {address}: {exc.strerror or exc}") from None


def _bind_reason(exc: RuntimeError) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text[:200] or "address in use or not available"
