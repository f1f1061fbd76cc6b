"""The local routes (`proxy.surface`), with a fake workspace behind them: pure decisions, no sockets."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest
from multidict import CIMultiDict

from proxy.errors import EndpointNotFound, InvalidRequest
from proxy.surface import Forward, LocalAnswer, LocalRequest, Surface
from proxy.surface.oauth import JWT_BEARER, TOKEN_PREFIX, token_answer
from proxy.surface.openai import forward_by_model, model_list
from proxy.surface.workspace import WorkspaceReads, local_document, local_endpoint

ORIGIN = "http://127.0.0.1:8484"
WORKSPACE = "https://ws.example.com"
HOST = (("Host", "127.0.0.1:8484"),)
FORM = (*HOST, ("Content-Type", "application/x-www-form-urlencoded"))
ROUTE_OPTIMIZED = {
    "name": "fraud-ro",
    "endpoint_url": "https://abc.serving.example.com/1/serving-endpoints/fraud-ro/invocations",
    "data_plane_info": {
        "query_info": {
            "endpoint_url": "https://abc.serving.example.com/1/serving-endpoints/fraud-ro/invocations",
            "authorization_details": "[...]",
        }
    },
    "route_optimized": True,
}


class FakeWorkspace:
    """An HttpFetch and a TokenSource: answers from a table, records what was asked."""

    def __init__(self, answers: dict[str, tuple[int, bytes]]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, str, Mapping[str, str]]] = []
        self.tokens = ["ws-token-1", "ws-token-2"]
        self.invalidated: list[str] = []

    async def __call__(
        self, method: str, url: str, *, headers: Mapping[str, str], body: bytes | None = None
    ) -> tuple[int, CIMultiDict[str], bytes]:
        self.calls.append((method, url, dict(headers)))
        status, answer = self.answers[url]
        if status == 401 and headers["Authorization"] == "Bearer ws-token-2":
            status, answer = 200, json.dumps(ROUTE_OPTIMIZED).encode()
        return status, CIMultiDict({"Content-Type": "application/json"}), answer

    async def get(self) -> str:
        return self.tokens[0]

    def invalidate(self, access_token: str) -> None:
        self.invalidated.append(access_token)
        self.tokens.remove(access_token)


def surface(workspace: FakeWorkspace | None = None, known: tuple[str, ...] = ()) -> Surface:
    fake = workspace or FakeWorkspace({})
    return Surface(WorkspaceReads(fake, fake, WORKSPACE), lambda: known)


async def answer(request: LocalRequest, workspace: FakeWorkspace | None = None) -> LocalAnswer:
    result = await surface(workspace).answer(request)
    assert isinstance(result, LocalAnswer)
    return result


def doc(result: LocalAnswer) -> Any:
    return json.loads(result.body)


def test_the_model_field_names_the_endpoint() -> None:
    assert forward_by_model(b'{"model": "chat-ro", "messages": []}') == Forward("chat-ro")


@pytest.mark.parametrize(
    ("body", "error", "message"),
    [
        (b"{not json", InvalidRequest, "JSON object"),
        (b'["chat-ro"]', InvalidRequest, "JSON object"),
        (b'{"messages": []}', InvalidRequest, "missing 'model'"),
        (b'{"model": ""}', InvalidRequest, "missing 'model'"),
        (b'{"model": 7}', InvalidRequest, "missing 'model'"),
        (b'{"model": "../api/2.0/secrets"}', EndpointNotFound, "not a serving endpoint name"),
        (b'{"model": "databricks/chat-ro"}', EndpointNotFound, "not a serving endpoint name"),
    ],
)
def test_a_missing_or_malformed_model_is_refused(body: bytes, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        forward_by_model(body)


async def test_openai_routes_forward_posts_only() -> None:
    for tail in ("chat/completions", "completions", "embeddings", "responses"):
        request = LocalRequest("POST", f"/serving-endpoints/{tail}?x=1", HOST, b'{"model": "m-1"}')
        assert await surface().answer(request) == Forward("m-1")
    refused = await answer(LocalRequest("PUT", "/serving-endpoints/embeddings", HOST, b'{"model": "m"}'))
    assert (refused.status, doc(refused)["error_code"]) == (405, "METHOD_NOT_ALLOWED")


async def test_models_lists_known_endpoints_in_the_openai_shape() -> None:
    result = await surface(known=("b", "a", "b")).answer(LocalRequest("GET", "/serving-endpoints/models", HOST))
    assert isinstance(result, LocalAnswer)
    assert doc(result) == model_list(["a", "b"])
    assert [m["id"] for m in doc(result)["data"]] == ["a", "b"]
    assert doc(result)["object"] == "list"


async def test_host_metadata_and_discovery_point_at_the_sidecar() -> None:
    metadata = doc(await answer(LocalRequest("GET", "/.well-known/databricks-config", HOST)))
    assert metadata["oidc_endpoint"] == f"{ORIGIN}/oidc"
    assert "workspace_id" not in metadata  # no workspace-id header that could disagree with the real one
    for path in ("/oidc/.well-known/oauth-authorization-server", "/oidc/.well-known/openid-configuration"):
        discovery = doc(await answer(LocalRequest("GET", path, HOST)))
        assert discovery["token_endpoint"] == f"{ORIGIN}/oidc/v1/token"
        assert discovery["authorization_endpoint"].startswith(ORIGIN)


@pytest.mark.parametrize("host", [None, "evil.example.com/x", "a b", "user@host", "host:port"])
async def test_answers_holding_the_sidecar_url_need_a_plain_host(host: str | None) -> None:
    headers = () if host is None else (("Host", host),)
    result = await answer(LocalRequest("GET", "/.well-known/databricks-config", headers))
    assert (result.status, doc(result)["error_code"]) == (400, "BAD_REQUEST")


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1:8484", "[::1]:8484", "sidecar.svc.local"])
def test_origin_from_host(host: str) -> None:
    assert LocalRequest("GET", "/", (("host", host),)).origin() == f"http://{host}"


def test_token_grants_hand_out_fresh_local_tokens() -> None:
    first = token_answer(LocalRequest("POST", "/oidc/v1/token", FORM, b"grant_type=client_credentials&scope=all-apis"))
    body = f"grant_type={JWT_BEARER}&assertion=anything&authorization_details=%5B%5D".encode()
    second = token_answer(LocalRequest("POST", "/oidc/v1/token", FORM, body))
    tokens = [doc(first)["access_token"], doc(second)["access_token"]]
    assert all(t.startswith(TOKEN_PREFIX) for t in tokens)
    assert tokens[0] != tokens[1]
    assert doc(first)["token_type"] == "Bearer"
    assert 0 < doc(first)["expires_in"] <= 3600
    assert ("Cache-Control", "no-store") in first.headers


@pytest.mark.parametrize(
    ("method", "headers", "body", "status", "error"),
    [
        ("GET", FORM, b"grant_type=client_credentials", 405, "invalid_request"),
        ("POST", HOST, b"grant_type=client_credentials", 400, "invalid_request"),
        ("POST", FORM, b"grant_type=password&username=u", 400, "unsupported_grant_type"),
        ("POST", FORM, f"grant_type={JWT_BEARER}".encode(), 400, "invalid_request"),
        ("POST", FORM, b"\xff\xfe", 400, "invalid_request"),
    ],
)
def test_token_endpoint_errors_are_oauth_shaped(
    method: str, headers: tuple[tuple[str, str], ...], body: bytes, status: int, error: str
) -> None:
    result = token_answer(LocalRequest(method, "/oidc/v1/token", headers, body))
    assert (result.status, doc(result)["error"]) == (status, error)
    assert ("Content-Type", "application/json") in result.headers


def test_data_plane_urls_point_at_the_sidecar() -> None:
    local = local_endpoint(ROUTE_OPTIMIZED, ORIGIN)
    url = f"{ORIGIN}/serving-endpoints/fraud-ro/invocations"
    assert local["endpoint_url"] == url
    assert local["data_plane_info"]["query_info"] == {"endpoint_url": url, "authorization_details": "[...]"}
    assert ROUTE_OPTIMIZED["endpoint_url"].startswith("https://abc")  # the input is left as it was
    plain = {"name": "plain-model", "route_optimized": False}
    assert local_endpoint(plain, ORIGIN) == plain
    odd = {**ROUTE_OPTIMIZED, "name": "../x"}
    assert local_endpoint(odd, ORIGIN) == odd
    listed = json.loads(local_document(json.dumps({"endpoints": [ROUTE_OPTIMIZED, plain, 3]}).encode(), ORIGIN))
    assert listed["endpoints"] == [local, plain, 3]
    assert local_document(b"not json", ORIGIN) == b"not json"


async def test_serving_endpoint_reads_go_to_the_workspace_with_its_token() -> None:
    url = f"{WORKSPACE}/api/2.0/serving-endpoints/fraud-ro"
    workspace = FakeWorkspace({url: (401, b'{"error_code": "UNAUTHENTICATED"}')})
    request = LocalRequest("GET", "/api/2.0/serving-endpoints/fraud-ro?x=1", (*HOST, ("Authorization", "Bearer mine")))
    result = await answer(request, workspace)
    assert result.status == 200
    assert doc(result)["endpoint_url"] == f"{ORIGIN}/serving-endpoints/fraud-ro/invocations"
    assert [call[1] for call in workspace.calls] == [url, url]  # no query string, a 401 retried once
    assert [call[2]["Authorization"] for call in workspace.calls] == ["Bearer ws-token-1", "Bearer ws-token-2"]
    assert workspace.invalidated == ["ws-token-1"]


async def test_workspace_errors_pass_through() -> None:
    url = f"{WORKSPACE}/api/2.0/serving-endpoints"
    workspace = FakeWorkspace({url: (503, b'{"error_code": "TEMPORARILY_UNAVAILABLE"}')})
    result = await answer(LocalRequest("GET", "/api/2.0/serving-endpoints", HOST), workspace)
    assert (result.status, result.body) == (503, b'{"error_code": "TEMPORARILY_UNAVAILABLE"}')


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/2.0/serving-endpoints"),
        ("DELETE", "/api/2.0/serving-endpoints/fraud-ro"),
        ("PUT", "/api/2.0/serving-endpoints/fraud-ro/config"),
        ("GET", "/api/2.0/serving-endpoints/fraud-ro/permissions"),
        ("GET", "/api/2.0/secrets/list"),
        ("GET", "/api/2.0/preview/scim/v2/Me"),
        ("GET", "/api/2.0/serving-endpoints/%2e%2e"),
    ],
)
async def test_everything_else_under_api_is_refused(method: str, path: str) -> None:
    workspace = FakeWorkspace({})
    result = await answer(LocalRequest(method, path), workspace)  # refused before anything else is looked at
    assert (result.status, doc(result)["error_code"]) == (403, "PERMISSION_DENIED")
    assert "serves queries only" in doc(result)["message"]
    assert workspace.calls == []


async def test_unknown_paths_are_404_naming_the_routes() -> None:
    result = await answer(LocalRequest("GET", "/foo", HOST))
    assert (result.status, doc(result)["error_code"]) == (404, "RESOURCE_DOES_NOT_EXIST")
    assert "/serving-endpoints/chat/completions" in doc(result)["message"]
