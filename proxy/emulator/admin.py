"""Admin routes under ``/_emulator/`` on the control-plane listener.

No authentication: the emulator is a test double that listens on loopback. Routes:

- ``GET  /_emulator/counters``; ``POST /_emulator/counters/reset``
- ``GET  /_emulator/faults``; ``POST /_emulator/faults`` (JSON merge patch of knobs, see ``faults``)
- ``POST /_emulator/fail-next`` ``{"count", "status", "retry_after"?, "endpoint"?}``
- ``GET  /_emulator/endpoints`` -> ``{"endpoints": [{"name", "id", "endpoint_url", "route_optimized"}]}``
- ``POST /_emulator/endpoints/{name}/recreate`` -> ``{"name", "id", "endpoint_url"}``
- ``POST /_emulator/tokens/revoke``
- ``POST /_emulator/clients/{client_id}`` ``{"secret"}``: that client authenticates with this secret from now on
- ``POST /_emulator/workload-token`` ``{"subject"?, "audience"?, "ttl"?}`` -> ``{"token"}``
- ``GET  /_emulator/k8s/jwks`` (the fake Kubernetes issuer's public keys)

Errors use the Databricks shape: 400 ``INVALID_PARAMETER_VALUE`` for bad JSON or values, 404 for
unknown endpoints.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Protocol

from aiohttp import web

from proxy.emulator.counters import Counters
from proxy.emulator.faults import Faults, FaultsError, apply_patch
from proxy.emulator.responses import databricks_error, json_response


class Controls(Protocol):
    """What the admin routes drive: the public API of ``Emulator``."""

    @property
    def faults(self) -> Faults: ...

    @property
    def counters(self) -> Counters: ...

    def endpoints(self) -> list[dict[str, Any]]: ...

    def recreate_endpoint(self, name: str) -> str: ...

    def endpoint_url(self, name: str) -> str: ...

    def revoke_all_tokens(self) -> None: ...

    def set_client_secret(self, client_id: str, secret: str) -> None: ...

    def issue_workload_token(
        self, *, subject: str | None = None, audience: str | None = None, ttl: float = 3600.0
    ) -> str: ...

    def workload_jwks(self) -> dict[str, Any]: ...


class _BadInput(Exception):
    pass


async def _json_object(request: web.Request) -> Mapping[str, Any]:
    raw = await request.read()
    try:
        value = json.loads(raw) if raw.strip() else {}
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _BadInput("the body must be a JSON object") from None
    if not isinstance(value, dict):
        raise _BadInput("the body must be a JSON object")
    return value


def _bad(message: str) -> web.Response:
    return databricks_error(400, "INVALID_PARAMETER_VALUE", message)


class Admin:
    """Handlers for ``/_emulator/``."""

    def __init__(self, controls: Controls) -> None:
        self._controls = controls

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/_emulator/counters", self.counters)
        app.router.add_post("/_emulator/counters/reset", self.reset_counters)
        app.router.add_get("/_emulator/faults", self.get_faults)
        app.router.add_post("/_emulator/faults", self.patch_faults)
        app.router.add_post("/_emulator/fail-next", self.fail_next)
        app.router.add_get("/_emulator/endpoints", self.endpoints)
        app.router.add_post("/_emulator/endpoints/{name}/recreate", self.recreate)
        app.router.add_post("/_emulator/tokens/revoke", self.revoke)
        app.router.add_post("/_emulator/clients/{client_id}", self.set_client_secret)
        app.router.add_post("/_emulator/workload-token", self.workload_token)
        app.router.add_get("/_emulator/k8s/jwks", self.jwks)

    async def counters(self, request: web.Request) -> web.Response:
        return json_response(self._controls.counters.snapshot())

    async def reset_counters(self, request: web.Request) -> web.Response:
        self._controls.counters.reset()
        return json_response(self._controls.counters.snapshot())

    async def get_faults(self, request: web.Request) -> web.Response:
        return json_response(self._controls.faults.as_dict())

    async def patch_faults(self, request: web.Request) -> web.Response:
        try:
            apply_patch(self._controls.faults, await _json_object(request))
        except (_BadInput, FaultsError) as err:
            return _bad(str(err))
        return json_response(self._controls.faults.as_dict())

    async def fail_next(self, request: web.Request) -> web.Response:
        try:
            body = await _json_object(request)
            unknown = sorted(set(body) - {"count", "status", "retry_after", "endpoint"})
            if unknown:
                raise _BadInput(f"unknown field {unknown[0]!r}")
            endpoint = body.get("endpoint")
            if endpoint is not None and not isinstance(endpoint, str):
                raise _BadInput("endpoint must be a string")
            self._controls.faults.fail_next(
                body.get("count", 1),
                body.get("status", 429),
                retry_after=body.get("retry_after"),
                endpoint=endpoint,
            )
        except (_BadInput, FaultsError) as err:
            return _bad(str(err))
        return json_response(self._controls.faults.as_dict())

    async def endpoints(self, request: web.Request) -> web.Response:
        return json_response({"endpoints": self._controls.endpoints()})

    async def recreate(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        try:
            new_id = self._controls.recreate_endpoint(name)
        except KeyError:
            return databricks_error(404, "RESOURCE_DOES_NOT_EXIST", f"Endpoint with name '{name}' does not exist.")
        return json_response({"name": name, "id": new_id, "endpoint_url": self._controls.endpoint_url(name)})

    async def revoke(self, request: web.Request) -> web.Response:
        self._controls.revoke_all_tokens()
        return json_response({"revoked": True})

    async def set_client_secret(self, request: web.Request) -> web.Response:
        client_id = request.match_info["client_id"]
        try:
            secret = (await _json_object(request)).get("secret")
            if not isinstance(secret, str) or not secret:
                raise _BadInput("secret must be a non-empty string")
        except _BadInput as err:
            return _bad(str(err))
        self._controls.set_client_secret(client_id, secret)
        return json_response({"client_id": client_id})

    async def workload_token(self, request: web.Request) -> web.Response:
        try:
            body = await _json_object(request)
            subject, audience, ttl = body.get("subject"), body.get("audience"), body.get("ttl", 3600.0)
            if not all(v is None or isinstance(v, str) for v in (subject, audience)):
                raise _BadInput("subject and audience must be strings")
            if isinstance(ttl, bool) or not isinstance(ttl, int | float):
                raise _BadInput("ttl must be a number of seconds")
        except _BadInput as err:
            return _bad(str(err))
        token = self._controls.issue_workload_token(subject=subject, audience=audience, ttl=float(ttl))
        return json_response({"token": token})

    async def jwks(self, request: web.Request) -> web.Response:
        return json_response(self._controls.workload_jwks())
