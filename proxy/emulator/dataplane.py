"""Invocations: the route-optimized data plane and plain endpoints on the workspace host.

Paths:
- data-plane port of an incarnation: ``POST /<workspace-id>/serving-endpoints/<name>/invocations``
  and ``.../<name>/served-models/<model>/invocations``;
- workspace host, plain endpoints only: ``POST /serving-endpoints/<name>/invocations`` and the
  served-models form. A route-optimized endpoint there answers 400 naming its route-optimized URL
  (endpoints created after 2025-09-22 only accept that URL).

Order of checks (the first failing one answers, Databricks error shape):
1. the endpoint exists and, on a data-plane port, is the port's current incarnation -> else 404
   ``RESOURCE_DOES_NOT_EXIST`` (an old port after ``recreate_endpoint`` lands here);
2. the token (``access.check_data_plane`` / ``access.check_plain``) -> 401 / 403;
3. the served model named in the path exists -> else 404 ``RESOURCE_DOES_NOT_EXIST``;
4. ``Content-Length`` above 16 MiB -> 413 (the body is never read);
5. a planned failure (``fail_next``) -> 429 ``REQUEST_LIMIT_EXCEEDED`` / 503 ``TEMPORARILY_UNAVAILABLE`` /
   ..., with ``Retry-After`` when planned;
6. a body above 16 MiB while reading -> 413; then, except on an ``echo`` endpoint (which takes any
   bytes), Content-Type other than ``application/json`` -> 415 and a body that is not JSON -> 400
   ``BAD_REQUEST``;
7. latency (knob, else ``EndpointSpec.latency``); then the ``answer_bytes`` knob, when set for the
   endpoint, streams that many filler bytes (200, ``application/octet-stream``, chunked) instead of any
   model answer; an ``echo`` endpoint answers 200 with the request body as it arrived; else the model
   (``models.answer``): invalid input -> 400 ``BAD_REQUEST`` with MLflow's text; else 200 with
   ``served-model-name``; ``"stream": true`` on a chat endpoint -> ``text/event-stream``.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable

from aiohttp import web

from proxy.emulator.access import Denial, check_data_plane, check_plain
from proxy.emulator.connections import ConnectionTracker
from proxy.emulator.endpoints import Incarnation
from proxy.emulator.models import Answer, InvalidInput, StreamedAnswer, answer
from proxy.emulator.responses import databricks_error, error_code_for, json_response
from proxy.emulator.state import EmulatorState
from proxy.emulator.tokens import TokenClaims

MAX_BODY = 16 * 1024 * 1024
FILLER_BLOCK = b"x" * 65536  # one write of an ``answer_bytes`` answer
OCTETS = "application/octet-stream"
SERVED_MODEL_HEADER = "served-model-name"
UNKNOWN_PATH = (
    "The path must be of the form /serving-endpoints/<endpoint_name>/invocations or "
    "/serving-endpoints/<endpoint_name>/served-models/<served_model_name>/invocations"
)


class _Rejected(Exception):
    """Carries an error response out of the checks."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


def _reject(status: int, error_code: str, message: str, headers: dict[str, str] | None = None) -> _Rejected:
    return _Rejected(databricks_error(status, error_code, message, headers=headers))


class Invocations:
    """Invocation handlers for both planes."""

    def __init__(self, state: EmulatorState, tracker: ConnectionTracker) -> None:
        self._state = state
        self._tracker = tracker

    def add_data_plane_routes(self, app: web.Application) -> None:
        base = "/{workspace_id}/serving-endpoints/{name}"
        app.router.add_route("*", base + "/invocations", self.routed)
        app.router.add_route("*", base + "/served-models/{model}/invocations", self.routed)

    def add_control_plane_routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/serving-endpoints/{name}/invocations", self.plain)
        app.router.add_route("*", "/serving-endpoints/{name}/served-models/{model}/invocations", self.plain)

    async def routed(self, request: web.Request) -> web.StreamResponse:
        """A data-plane port: the path must name the port's current incarnation (check 1)."""
        name = request.match_info["name"]
        connection = self._tracker.state(request)
        incarnation = None if connection is None else self._state.registry.by_port(connection.port)
        if (
            incarnation is None
            or request.match_info["workspace_id"] != self._state.settings.workspace_id
            or incarnation.name != name
            or not self._state.registry.is_current(incarnation)
        ):
            return self._count(name, _missing(name))
        return await self._invoke(request, incarnation, self._check_routed)

    async def plain(self, request: web.Request) -> web.StreamResponse:
        """The workspace host: plain endpoints only (check 1)."""
        name = request.match_info["name"]
        incarnation = self._state.registry.get(name)
        if incarnation is None:
            return self._count(name, _missing(name))
        if incarnation.spec.route_optimized:
            url = self._state.endpoint_url(incarnation)
            message = (
                f"Endpoint '{name}' is route-optimized and can only be queried through its route-optimized URL: {url}"
            )
            return self._count(name, databricks_error(400, "BAD_REQUEST", message))
        return await self._invoke(request, incarnation, self._check_plain)

    def _check_routed(self, authorization: str | None, incarnation: Incarnation) -> TokenClaims | Denial:
        return check_data_plane(authorization, incarnation, self._state.authority, now=self._state.clock())

    def _check_plain(self, authorization: str | None, incarnation: Incarnation) -> TokenClaims | Denial:
        return check_plain(authorization, incarnation, self._state.authority, now=self._state.clock())

    def _count(self, name: str, response: web.StreamResponse) -> web.StreamResponse:
        self._state.counters.invocation(name, response.status)
        return response

    async def _invoke(
        self,
        request: web.Request,
        incarnation: Incarnation,
        check: Callable[[str | None, Incarnation], TokenClaims | Denial],
    ) -> web.StreamResponse:
        counters = self._state.counters
        counters.invocations_in_flight += 1
        try:
            response = await self._answer(request, incarnation, check)
        except _Rejected as rejected:
            response = rejected.response
        except asyncio.CancelledError:
            counters.invocations_cancelled += 1
            raise
        finally:
            counters.invocations_in_flight -= 1
        if not response.prepared:
            counters.invocation(incarnation.name, response.status)
        return response

    async def _answer(
        self,
        request: web.Request,
        incarnation: Incarnation,
        check: Callable[[str | None, Incarnation], TokenClaims | Denial],
    ) -> web.StreamResponse:
        if request.method != "POST":
            raise _reject(405, "BAD_REQUEST", f"Method {request.method} is not allowed; use POST")
        denial = check(request.headers.get("Authorization"), incarnation)
        if isinstance(denial, Denial):
            raise _reject(denial.status, denial.error_code, denial.message)
        model = self._served_model(request, incarnation)
        if request.content_length is not None and request.content_length > MAX_BODY:
            raise _too_large()
        self._planned_failure(incarnation)
        body = await (_read_body(request) if incarnation.spec.kind == "echo" else _read_json(request))
        latency = self._state.faults.latency_for(incarnation.name, incarnation.spec.latency)
        if latency > 0:
            await asyncio.sleep(latency)
        filler = self._state.faults.answer_bytes.get(incarnation.name)
        if filler is not None:
            return await self._stream_filler(request, incarnation, filler, {SERVED_MODEL_HEADER: model})
        if isinstance(body, bytes):  # an echo endpoint: the body as it arrived
            return web.Response(body=body, content_type=OCTETS, headers={SERVED_MODEL_HEADER: model})
        try:
            result = answer(incarnation.spec.kind, body, model=model, created=math.floor(self._state.clock()))
        except InvalidInput as err:
            raise _reject(400, "BAD_REQUEST", str(err)) from None
        headers = {SERVED_MODEL_HEADER: model}
        if isinstance(result, Answer):
            return json_response(result.body, headers=headers)
        return await self._stream(request, incarnation, result, headers)

    def _served_model(self, request: web.Request, incarnation: Incarnation) -> str:
        model = request.match_info.get("model")
        if model is None:
            return incarnation.spec.served_models[0]
        if model not in incarnation.spec.served_models:
            raise _reject(
                404,
                "RESOURCE_DOES_NOT_EXIST",
                f"Served model '{model}' does not exist in endpoint '{incarnation.name}'.",
            )
        return model

    def _planned_failure(self, incarnation: Incarnation) -> None:
        planned = self._state.faults.take_failure(incarnation.name)
        if planned is None:
            return
        headers = None if planned.retry_after is None else {"Retry-After": str(planned.retry_after)}
        message = {
            429: (
                "Too many concurrent requests. Consider increasing the provisioned concurrency of the served entity."
            ),
            503: "The service is temporarily unavailable. Please try again later.",
        }.get(planned.status, "Injected failure.")
        raise _reject(planned.status, error_code_for(planned.status), message, headers)

    async def _stream(
        self, request: web.Request, incarnation: Incarnation, result: StreamedAnswer, headers: dict[str, str]
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            status=200,
            headers={**headers, "Content-Type": "text/event-stream", "Cache-Control": "no-cache"},
        )
        await response.prepare(request)
        self._state.counters.invocation(incarnation.name, 200)
        for index, event in enumerate(result.events):
            if index:
                await asyncio.sleep(incarnation.spec.stream_interval)
            await response.write(b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _stream_filler(
        self, request: web.Request, incarnation: Incarnation, size: int, headers: dict[str, str]
    ) -> web.StreamResponse:
        """``size`` filler bytes, chunked, each write waiting while the peer's transport is full."""
        response = web.StreamResponse(status=200, headers={**headers, "Content-Type": OCTETS})
        await response.prepare(request)
        self._state.counters.invocation(incarnation.name, 200)
        remaining = size
        while remaining > 0:
            block = FILLER_BLOCK[:remaining]
            await response.write(block)
            remaining -= len(block)
            self._state.counters.answer_bytes_sent += len(block)
        await response.write_eof()
        return response


def _missing(name: str) -> web.Response:
    return databricks_error(404, "RESOURCE_DOES_NOT_EXIST", f"Endpoint with name '{name}' does not exist.")


def _too_large() -> _Rejected:
    return _reject(413, "BAD_REQUEST", f"Request payload is larger than the limit of {MAX_BODY} bytes (16 MiB).")


async def _read_json(request: web.Request) -> object:
    """Check 6: the body as JSON, read with a 16 MiB cap."""
    if "Content-Type" in request.headers and request.content_type != "application/json":
        raise _reject(
            415,
            "BAD_REQUEST",
            "This predictor only supports the following content types: Types: ['application/json']. "
            f"Got '{request.content_type}'.",
        )
    body = await _read_body(request)
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _reject(
            400,
            "BAD_REQUEST",
            f"Invalid input. Ensure that input is a valid JSON formatted string. Error: '{err}'",
        ) from None


async def _read_body(request: web.Request) -> bytes:
    """The body's bytes, read with a 16 MiB cap (413 beyond it)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.read(1 << 20)
        if not chunk:
            break
        size += len(chunk)
        if size > MAX_BODY:
            raise _too_large()
        chunks.append(chunk)
    return b"".join(chunks)
