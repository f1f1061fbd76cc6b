"""The workspace surface clients touch: host metadata answered here, serving-endpoint reads passed through.

Rules:
1. `GET /.well-known/databricks-config` is answered by the sidecar: its OIDC endpoint is the sidecar's
   local OAuth facade. It names no workspace or account id, so the SDK sends no workspace-id header
   that could disagree with the real workspace.
2. `GET /api/2.0/serving-endpoints` and `GET /api/2.0/serving-endpoints/{name}` go to the workspace with
   the sidecar's workspace token (none of the caller's headers or query string goes along). In a
   successful answer every data-plane URL (`endpoint_url`, `data_plane_info.query_info.endpoint_url`)
   is replaced by the sidecar's own invocation URL for that name, so SDK data-plane calls come back here.
3. Every other `/api/` path, and every method but GET there, is refused with 403: the sidecar serves
   queries only, with the service principal's rights.
"""

from __future__ import annotations

import json
import re
from typing import Any

from proxy.endpoints import HttpFetch, TokenSource, workspace_get
from proxy.errors import SidecarError
from proxy.routing import NAME, is_valid_name
from proxy.surface.messages import JSON, LocalAnswer, LocalRequest

HOST_METADATA = "/.well-known/databricks-config"
API_PREFIX = "/api/"
_READABLE = re.compile(rf"/api/2\.0/serving-endpoints(?:/{NAME})?")


class QueriesOnly(SidecarError):
    status = 403
    error_code = "PERMISSION_DENIED"


def host_metadata(origin: str) -> dict[str, Any]:
    """Rule 1."""
    return {
        "oidc_endpoint": f"{origin}/oidc",
        "host_type": "workspace",
        "token_federation_default_oidc_audiences": [f"{origin}/oidc/v1/token"],
    }


def local_endpoint(doc: dict[str, Any], origin: str) -> dict[str, Any]:
    """An endpoint document with its data-plane URLs pointing at the sidecar (rule 2); pure."""
    name = doc.get("name")
    if not isinstance(name, str) or not is_valid_name(name):
        return doc
    url = f"{origin}/serving-endpoints/{name}/invocations"
    local = dict(doc)
    if "endpoint_url" in local:
        local["endpoint_url"] = url
    plane = local.get("data_plane_info")
    query_info = plane.get("query_info") if isinstance(plane, dict) else None
    if isinstance(plane, dict) and isinstance(query_info, dict) and "endpoint_url" in query_info:
        local["data_plane_info"] = {**plane, "query_info": {**query_info, "endpoint_url": url}}
    return local


def local_document(body: bytes, origin: str) -> bytes:
    """A workspace answer (one endpoint, or `{"endpoints": [...]}`) rewritten by `local_endpoint`."""
    try:
        doc = json.loads(body)
    except ValueError:
        return body
    if not isinstance(doc, dict):
        return body
    listed = doc.get("endpoints")
    if isinstance(listed, list):
        doc = {**doc, "endpoints": [local_endpoint(e, origin) if isinstance(e, dict) else e for e in listed]}
    else:
        doc = local_endpoint(doc, origin)
    return json.dumps(doc).encode()


def check_readable(request: LocalRequest) -> None:
    """Rule 3: QueriesOnly (403) unless a GET of the serving-endpoints list or one endpoint."""
    if request.method != "GET" or not _READABLE.fullmatch(request.path):
        raise QueriesOnly(
            f"serving-sidecar serves queries only: {request.method} {request.path} is not passed to the "
            "workspace (read-only GET /api/2.0/serving-endpoints[/<name>] is)"
        )


class WorkspaceReads:
    """Rules 2 and 3, through the control-plane fetch and the workspace token the Resolver uses."""

    def __init__(self, http: HttpFetch, token: TokenSource, workspace_url: str) -> None:
        self._http = http
        self._token = token
        self._workspace_url = workspace_url

    def __repr__(self) -> str:
        return f"WorkspaceReads({self._workspace_url!r})"

    async def answer(self, request: LocalRequest, origin: str) -> LocalAnswer:
        """The workspace's answer to a readable request (`check_readable`), URLs rewritten for `origin`."""
        check_readable(request)
        path = request.path
        status, headers, body = await workspace_get(self._http, self._token, self._workspace_url + path)
        if status == 200:
            body = local_document(body, origin)
        return LocalAnswer(status, (("Content-Type", headers.get("Content-Type", JSON)),), body)
