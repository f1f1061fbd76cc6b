"""No handler failure ever reaches a client as a traceback."""

from __future__ import annotations

import json

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from proxy.emulator.server import _error_middleware


async def _explode(request: web.Request) -> web.StreamResponse:
    raise RuntimeError("boom")


async def _not_found(request: web.Request) -> web.StreamResponse:
    raise web.HTTPNotFound()


async def test_unexpected_exceptions_become_json_500() -> None:
    response = await _error_middleware(make_mocked_request("GET", "/api/2.0/x"), _explode)
    assert isinstance(response, web.Response)
    assert response.status == 500
    assert response.content_type == "application/json"
    assert response.body is not None
    body = json.loads(bytes(response.body))  # type: ignore[arg-type]
    assert body == {"error_code": "INTERNAL_ERROR", "message": "Internal error in the emulator"}


async def test_http_errors_take_the_shape_of_the_path() -> None:
    oidc = await _error_middleware(make_mocked_request("GET", "/oidc/v1/x"), _not_found)
    api = await _error_middleware(make_mocked_request("GET", "/api/2.0/x"), _not_found)
    assert isinstance(oidc, web.Response) and isinstance(api, web.Response)
    assert json.loads(bytes(oidc.body))["error"] == "invalid_request"  # type: ignore[arg-type]
    assert json.loads(bytes(api.body))["error_code"] == "ENDPOINT_NOT_FOUND"  # type: ignore[arg-type]
