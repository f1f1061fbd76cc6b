"""HTTP front: `POST /serving-endpoints/{name}[/served-models/{model}]/invocations`, unauthenticated.

Every other path goes to the local routes (`proxy.surface`): their answer is sent as it is, or their
`Forward` goes through the same forwarding code as an invocation of that endpoint.

Bodies pass through as bytes (request and response, no decompression); answers stream back chunk by
chunk, so SSE events reach the caller as the upstream sends them. Errors the sidecar makes itself are
Databricks-shaped JSON; upstream errors pass through unchanged.

Every request gets a request id (the caller's `X-Request-Id` when safe, else a new one): bound in the
log context for the whole request, sent upstream, and returned on the response.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from aiohttp import web

from proxy import logs, routing
from proxy.config import MAX_BODY_BYTES
from proxy.errors import BodyTooLarge, MethodNotAllowed, SidecarError
from proxy.forwarding import Forwarder, Invocation, downstream_headers
from proxy.metrics import Metrics
from proxy.surface import Forward, LocalRequest, Surface

log = logging.getLogger("serving_sidecar")
FRONT = "http"
LOCAL = "(local routes)"  # the admission key while a local route's body is read and answered
LabelFor = Callable[[str], str]


def error_response(error: SidecarError, request_id: str | None = None) -> web.Response:
    headers = error.headers()
    if request_id is not None:
        headers[logs.REQUEST_ID_HEADER] = request_id
    return web.Response(status=error.status, body=error.body(), headers=headers)


def _reply_headers(upstream: list[tuple[str, str]], request_id: str) -> list[tuple[str, str]]:
    """Upstream headers for the caller, with the caller's request id in place of any upstream one."""
    kept = [(name, value) for name, value in upstream if name.lower() != "x-request-id"]
    return [*kept, (logs.REQUEST_ID_HEADER, request_id)]


def _size(response: web.StreamResponse | None) -> int | None:
    """Body bytes sent (streamed answers) or about to be sent (answers the sidecar made itself)."""
    if response is None:
        return None
    if response.prepared:
        return response.body_length
    body = response.body if isinstance(response, web.Response) else None
    return len(body) if isinstance(body, bytes) else None


class HttpFront:
    def __init__(
        self,
        forwarder: Forwarder,
        metrics: Metrics,
        label_for: LabelFor,
        surface: Surface,
        *,
        access_log: bool = False,
    ) -> None:
        self._forwarder = forwarder
        self._surface = surface
        self._metrics = metrics
        self._label_for = label_for
        self._access_log = access_log
        metrics.in_flight.labels(front=FRONT)  # exported as 0 from the start, not from the first request

    def __repr__(self) -> str:
        return f"HttpFront({self._forwarder!r})"

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        with logs.bound_request_id(logs.request_id_from(request.headers.get(logs.REQUEST_ID_HEADER))) as rid:
            return await self._handle(request, rid)

    async def _handle(self, request: web.Request, request_id: str) -> web.StreamResponse:
        started = time.perf_counter()
        route = routing.match(request.raw_path)
        in_flight = self._metrics.in_flight.labels(front=FRONT)
        in_flight.inc()
        status: int | str = "error"
        response: web.StreamResponse | None = None
        try:
            if route is None:
                response, route = await self._local(request, request_id)
            else:
                response = await self._serve(request, route, request_id)
            status = response.status
            return response
        finally:
            in_flight.dec()
            seconds = time.perf_counter() - started
            # Labelled after the call: a name becomes a label only once it resolved.
            label = self._label_for(route.endpoint if route is not None else "")
            self._metrics.observe_request(endpoint=label, front=FRONT, code=status, seconds=seconds)
            if self._access_log:
                path = logs.access_path(request.raw_path)
                record = logs.AccessRecord(FRONT, request.method, path, label, status, seconds, _size(response))
                logs.log_access(record)

    async def _local(self, request: web.Request, request_id: str) -> tuple[web.StreamResponse, routing.Route | None]:
        """A local route: its answer, or the forwarded endpoint's (with the route, for the metric label)."""
        try:
            with self._forwarder.admit(LOCAL):  # bodies read here are bounded in number too
                local = LocalRequest(
                    request.method, request.raw_path, tuple(request.headers.items()), await _body(request)
                )
                outcome = await self._surface.answer(local)
        except SidecarError as error:
            return error_response(error, request_id), None
        if isinstance(outcome, Forward):
            route = routing.Route(outcome.endpoint, outcome.served_model)
            return await self._serve(request, route, request_id, body=local.body), route
        headers = [*outcome.headers, (logs.REQUEST_ID_HEADER, request_id)]
        return web.Response(status=outcome.status, body=outcome.body, headers=headers), None

    async def _serve(
        self, request: web.Request, route: routing.Route, request_id: str, *, body: bytes | None = None
    ) -> web.StreamResponse:
        response: web.StreamResponse | None = None
        try:
            accepted = _accepted_route(request, route)
            with self._forwarder.admit(accepted.endpoint):  # before the body is read: bounded memory
                call = await self._invocation(request, accepted, request_id, body)
                async with self._forwarder.invoke(call) as reply:
                    headers = _reply_headers(downstream_headers(reply.headers), request_id)
                    response = web.StreamResponse(status=reply.status, headers=headers)
                    length = reply.headers.get("Content-Length")
                    if length is not None and length.isdigit():
                        response.content_length = int(length)
                    await response.prepare(request)
                    async for chunk in reply.chunks():
                        await response.write(chunk)
                    await response.write_eof()
                    return response
        except Exception as exc:
            error = exc if isinstance(exc, SidecarError) else _internal_error(exc)
            if response is None or not response.prepared:
                return error_response(error, request_id)
            # Headers already went out: cut the connection so the caller sees a broken answer, not a short one.
            if request.transport is not None:
                request.transport.close()
            return response

    @staticmethod
    async def _invocation(
        request: web.Request, route: routing.Route, request_id: str, body: bytes | None
    ) -> Invocation:
        return Invocation(
            endpoint=route.endpoint,
            served_model=route.served_model,
            body=await _body(request) if body is None else body,
            headers=request.headers.items(),
            request_id=request_id,
        )


async def _body(request: web.Request) -> bytes:
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise BodyTooLarge(f"request body exceeds the limit of {MAX_BODY_BYTES} bytes") from None


def _accepted_route(request: web.Request, route: routing.Route) -> routing.Route:
    """The route of an acceptable request, judged from its line and headers alone (no body read)."""
    if request.method != "POST":
        raise MethodNotAllowed(f"method {request.method} not allowed: invocations take POST")
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise BodyTooLarge(f"request body is {request.content_length} bytes; the limit is {MAX_BODY_BYTES}")
    return route


def _internal_error(exc: Exception) -> SidecarError:
    """A bug, not a condition: logged with its traceback here, answered as a Databricks-shaped 500."""
    log.exception("internal error while serving a request")
    return SidecarError(f"internal error in serving-sidecar ({type(exc).__name__}); see its log")
