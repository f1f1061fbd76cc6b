"""The local routes: every HTTP request that is not an invocation route, answered here or forwarded.

- `POST /serving-endpoints/{chat/completions,completions,embeddings,responses}`: Forward to the endpoint
  the body's `model` names (`surface.openai`);
- `GET /serving-endpoints/models`: the endpoints the sidecar knows (configured and resolved), OpenAI list;
- `GET /.well-known/databricks-config`: host metadata pointing at the local OAuth facade;
- `GET /oidc/.well-known/{oauth-authorization-server,openid-configuration}`, `POST /oidc/v1/token`: the
  local OAuth facade (`surface.oauth`);
- `GET /api/2.0/serving-endpoints[/{name}]`: the workspace's answer, data-plane URLs pointing here;
  any other `/api/...` path, or another method there: 403, queries only (`surface.workspace`);
- anything else: 404.

`Surface.answer` is total: errors the sidecar makes come back as Databricks-shaped `LocalAnswer`s (OAuth-
shaped on the token endpoint). Only an unexpected exception (a bug) escapes, for the front to report.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from proxy.errors import EndpointNotFound, InvalidRequest, MethodNotAllowed, SidecarError
from proxy.surface import oauth, openai, workspace
from proxy.surface.messages import Forward, LocalAnswer, LocalRequest, error_answer, json_answer

NO_SUCH_ROUTE = (
    "no such route: use POST /serving-endpoints/<endpoint_name>/invocations or "
    "/serving-endpoints/<endpoint_name>/served-models/<served_model_name>/invocations, or the OpenAI-style "
    "POST /serving-endpoints/chat/completions (completions, embeddings, responses) with the endpoint as 'model'"
)
KnownEndpoints = Callable[[], Iterable[str]]


class Surface:
    def __init__(self, workspace_reads: workspace.WorkspaceReads, known_endpoints: KnownEndpoints) -> None:
        self._workspace = workspace_reads
        self._known = known_endpoints

    def __repr__(self) -> str:
        return f"Surface({self._workspace!r})"

    async def answer(self, request: LocalRequest) -> LocalAnswer | Forward:
        try:
            return await self._route(request)
        except SidecarError as error:
            return error_answer(error)

    async def _route(self, request: LocalRequest) -> LocalAnswer | Forward:
        path = request.path
        if path in openai.ROUTES:
            _require(request, "POST")
            return openai.forward_by_model(request.body)
        if path == openai.MODELS:
            _require(request, "GET")
            return json_answer(openai.model_list(self._known()))
        if path == oauth.TOKEN:
            return oauth.token_answer(request)
        if path.startswith(workspace.API_PREFIX):
            workspace.check_readable(request)
            return await self._workspace.answer(request, _origin(request))
        if path == workspace.HOST_METADATA:
            _require(request, "GET")
            return json_answer(workspace.host_metadata(_origin(request)))
        if path in oauth.DISCOVERY:
            _require(request, "GET")
            return json_answer(oauth.discovery_document(_origin(request)))
        raise EndpointNotFound(NO_SUCH_ROUTE)


def _origin(request: LocalRequest) -> str:
    """How the caller reaches the sidecar, for answers that hold the sidecar's own URLs."""
    origin = request.origin()
    if origin is None:
        raise InvalidRequest("a Host header (host[:port]) is needed: answers on this path hold the sidecar's URL")
    return origin


def _require(request: LocalRequest, method: str) -> None:
    if request.method != method:
        raise MethodNotAllowed(f"method {request.method} not allowed on {request.path}: use {method}")
