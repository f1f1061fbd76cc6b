"""Workspace (control-plane) REST APIs: host metadata, serving-endpoint metadata, SCIM ``Me``.

- ``GET /.well-known/databricks-config``: no auth (the SDK reads it before it has a token).
- ``GET /api/2.0/serving-endpoints/{name}`` and ``GET /api/2.0/serving-endpoints``: a workspace
  token (401 otherwise); unknown names answer 404 ``RESOURCE_DOES_NOT_EXIST``. The
  ``X-Databricks-Org-Id`` / ``X-Databricks-Workspace-Id`` request headers are accepted, not required;
  a value naming another workspace answers 403.
- ``GET /api/2.0/preview/scim/v2/Me``: a workspace token; answers with ``X-Databricks-Org-Id``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from aiohttp import web

from proxy.emulator.access import Denial, check_workspace
from proxy.emulator.endpoints import CREATOR, Incarnation
from proxy.emulator.faults import merge_patch
from proxy.emulator.responses import databricks_error, error_code_for, json_response
from proxy.emulator.state import EmulatorState
from proxy.emulator.tokens import TokenClaims

TASKS = {"custom": None, "feature": None, "chat": "agent/v1/chat", "embeddings": "llm/v1/embeddings", "echo": None}


def host_metadata(state: EmulatorState) -> dict[str, Any]:
    """The ``/.well-known/databricks-config`` document."""
    return {
        "oidc_endpoint": f"{state.workspace_url}/oidc",
        "workspace_id": state.settings.workspace_id,
        "account_id": state.settings.account_id,
        "cloud": "AWS",
        "host_type": "workspace",
        "token_federation_default_oidc_audiences": [state.token_endpoint],
    }


def authorization_details(incarnation: Incarnation) -> list[dict[str, Any]]:
    """The details a client passes to the token endpoint to query this incarnation."""
    return [
        {
            "type": "workspace_permission",
            "object_type": "serving-endpoints",
            "object_path": incarnation.object_path,
            "actions": ["query_inference_endpoint"],
        }
    ]


def _served_entity(incarnation: Incarnation, model: str, index: int) -> dict[str, Any]:
    spec = incarnation.spec
    entity: dict[str, Any] = {
        "name": model,
        "entity_name": f"main.emulated.{spec.name.replace('-', '_')}" + ("_spec" if spec.kind == "feature" else ""),
        "workload_size": "Small",
        "workload_type": "CPU",
        "scale_to_zero_enabled": False,
        "state": {"deployment": "DEPLOYMENT_READY", "deployment_state_message": ""},
        "creator": CREATOR,
        "creation_timestamp": incarnation.created_ms,
    }
    if spec.kind != "feature":
        entity["entity_version"] = str(index + 1)
    return entity


def _config(incarnation: Incarnation) -> dict[str, Any]:
    models = incarnation.spec.served_models
    share, rest = divmod(100, len(models))
    routes = [
        {
            "served_model_name": m,
            "served_entity_name": m,
            "traffic_percentage": share + (rest if i == 0 else 0),
        }
        for i, m in enumerate(models)
    ]
    return {
        "config_version": 1,
        "served_entities": [_served_entity(incarnation, m, i) for i, m in enumerate(models)],
        "served_models": [
            {
                "name": m,
                "model_name": _served_entity(incarnation, m, i)["entity_name"],
                "state": {"deployment": "DEPLOYMENT_READY"},
            }
            for i, m in enumerate(models)
        ],
        "traffic_config": {"routes": routes},
    }


def endpoint_summary(state: EmulatorState, incarnation: Incarnation) -> dict[str, Any]:
    """The ``ServingEndpoint`` shape used by the list API."""
    summary: dict[str, Any] = {
        "name": incarnation.name,
        "id": incarnation.endpoint_id,
        "creator": CREATOR,
        "creation_timestamp": incarnation.created_ms,
        "last_updated_timestamp": incarnation.created_ms,
        "state": {"ready": "READY", "config_update": "NOT_UPDATING"},
        "config": {"served_entities": _config(incarnation)["served_entities"]},
        "tags": [],
    }
    task = TASKS[incarnation.spec.kind]
    if task:
        summary["task"] = task
    return summary


def endpoint_detail(state: EmulatorState, incarnation: Incarnation) -> dict[str, Any]:
    """The ``ServingEndpointDetailed`` shape (protocol doc section 1.2)."""
    detail = endpoint_summary(state, incarnation)
    detail.update(
        {
            "route_optimized": incarnation.spec.route_optimized,
            "config": _config(incarnation),
            "permission_level": "CAN_QUERY",
        }
    )
    if incarnation.spec.route_optimized:
        url = state.endpoint_url(incarnation)
        detail["endpoint_url"] = url
        detail["data_plane_info"] = {
            "query_info": {
                "endpoint_url": url,
                "authorization_details": json.dumps(authorization_details(incarnation), separators=(",", ":")),
            }
        }
    return detail


class WorkspaceApi:
    """Handlers for the workspace REST APIs."""

    def __init__(self, state: EmulatorState) -> None:
        self._state = state

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/.well-known/databricks-config", self.databricks_config)
        app.router.add_get("/api/2.0/serving-endpoints", self.list_endpoints)
        app.router.add_get("/api/2.0/serving-endpoints/{name}", self.get_endpoint)
        app.router.add_get("/api/2.0/preview/scim/v2/Me", self.me)

    async def databricks_config(self, request: web.Request) -> web.Response:
        return json_response(host_metadata(self._state))

    def _authenticate(self, request: web.Request) -> TokenClaims | web.Response:
        for header in ("X-Databricks-Workspace-Id", "X-Databricks-Org-Id"):
            value = request.headers.get(header)
            if value is not None and value != self._state.settings.workspace_id:
                return databricks_error(403, "PERMISSION_DENIED", f"{header} {value} does not name this workspace")
        claims = check_workspace(request.headers.get("Authorization"), self._state.authority, now=self._state.clock())
        if isinstance(claims, Denial):
            return databricks_error(claims.status, claims.error_code, claims.message)
        return claims

    async def get_endpoint(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self._state.counters.metadata_read(name)
        claims = self._authenticate(request)
        if isinstance(claims, web.Response):
            return claims
        failure = self._state.faults.metadata_failures.get(name)
        if failure is not None:
            headers = {"Retry-After": "1"} if failure == 429 else None
            return databricks_error(failure, error_code_for(failure), "planned failure", headers=headers)
        incarnation = self._state.registry.get(name)
        if incarnation is None:
            return databricks_error(404, "RESOURCE_DOES_NOT_EXIST", f"Endpoint with name '{name}' does not exist.")
        detail = endpoint_detail(self._state, incarnation)
        override = self._state.faults.metadata_overrides.get(name)
        return json_response(detail if override is None else merge_patch(detail, override))

    async def list_endpoints(self, request: web.Request) -> web.Response:
        self._state.counters.metadata_lists += 1
        claims = self._authenticate(request)
        if isinstance(claims, web.Response):
            return claims
        current = self._state.registry.current()
        return json_response({"endpoints": [endpoint_summary(self._state, i) for i in current]})

    async def me(self, request: web.Request) -> web.Response:
        claims = self._authenticate(request)
        if isinstance(claims, web.Response):
            return claims
        body = {
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "id": str(int(hashlib.sha256(claims.subject.encode()).hexdigest()[:12], 16)),
            "userName": claims.subject,
            "displayName": claims.subject,
            "active": True,
        }
        return json_response(body, headers={"X-Databricks-Org-Id": self._state.settings.workspace_id})
