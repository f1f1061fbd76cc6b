"""HTTP front: `POST /serving-endpoints/{name}[/served-models/{model}]/invocations`, unauthenticated.

Bodies pass through as bytes (request and response, no decompression); answers stream back chunk by
chunk, so SSE events reach the caller as the upstream sends them. Errors the sidecar makes itself are
Databricks-shaped JSON; upstream errors pass through unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from aiohttp import web

from proxy import routing
from proxy.config import MAX_BODY_BYTES
from proxy.errors import BodyTooLarge, EndpointNotFound, MethodNotAllowed, SidecarError
from proxy.forwarding import Forwarder, Invocation, downstream_headers
from proxy.metrics import Metrics

FRONT = "http"
LabelFor = Callable[[str], str]


def error_response(error: SidecarError) -> web.Response:
    return web.Response(status=error.status, body=error.body(), headers=error.headers())


class HttpFront:
    def __init__(self, forwarder: Forwarder, metrics: Metrics, label_for: LabelFor) -> None:
        self._forwarder = forwarder
        self._metrics = metrics
        self._label_for = label_for

    def __repr__(self) -> str:
        return f"HttpFront({self._forwarder!r})"

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        route = routing.match(request.raw_path)
        label = self._label_for(route.endpoint) if route else self._label_for("")
        in_flight = self._metrics.in_flight.labels(front=FRONT)
        in_flight.inc()
        status: int | str = "error"
        try:
            response = await self._serve(request, route)
            status = response.status
            return response
        finally:
            in_flight.dec()
            if route is not None:
                label = self._label_for(route.endpoint)
            self._metrics.observe_request(
                endpoint=label, front=FRONT, code=status, seconds=time.perf_counter() - started
            )

    async def _serve(self, request: web.Request, route: routing.Route | None) -> web.StreamResponse:
        response: web.StreamResponse | None = None
        try:
            call = await self._invocation(request, route)
            async with self._forwarder.invoke(call) as reply:
                response = web.StreamResponse(status=reply.status, headers=downstream_headers(reply.headers))
                length = reply.headers.get("Content-Length")
                if length is not None and length.isdigit():
                    response.content_length = int(length)
                await response.prepare(request)
                async for chunk in reply.chunks():
                    await response.write(chunk)
                await response.write_eof()
                return response
        except SidecarError as error:
            if response is None or not response.prepared:
                return error_response(error)
            # Headers already went out: cut the connection so the caller sees a broken answer, not a short one.
            if request.transport is not None:
                request.transport.close()
            return response

    async def _invocation(self, request: web.Request, route: routing.Route | None) -> Invocation:
        if route is None:
            raise EndpointNotFound(
                "no such route: use POST /serving-endpoints/<endpoint_name>/invocations or "
                "/serving-endpoints/<endpoint_name>/served-models/<served_model_name>/invocations"
            )
        if request.method != "POST":
            raise MethodNotAllowed(f"method {request.method} not allowed: invocations take POST")
        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            raise BodyTooLarge(f"request body is {request.content_length} bytes; the limit is {MAX_BODY_BYTES}")
        self._forwarder.admission.check(route.endpoint)  # shed before reading the body: bounded memory
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise BodyTooLarge(f"request body exceeds the limit of {MAX_BODY_BYTES} bytes") from None
        return Invocation(
            endpoint=route.endpoint,
            served_model=route.served_model,
            body=body,
            headers=request.headers.items(),
        )
