"""Endpoint metadata is untrusted input: its shape, its URLs and the lookups it costs, without sockets."""

from __future__ import annotations

import asyncio
import json
import traceback
from typing import Any

import pytest

from proxy.credentials.targets import token_kind
from proxy.endpoints import FAILURE_TTL, NEGATIVE_TTL, Resolver, parse_resolution
from proxy.errors import (
    BadMetadata,
    EndpointNotFound,
    LookupsThrottled,
    NoCredential,
    UpstreamUnreachable,
)
from proxy.ratelimit import TokenBucket

WORKSPACE = "https://ws.example"
DP_URL = "https://abc.serving.example/1/serving-endpoints/fraud/invocations"
DETAILS = '[{"type":"workspace_permission","object_path":"/serving-endpoints/abc"}]'


def document(**patch: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": "fraud",
        "id": "abc",
        "state": {"ready": "READY", "config_update": "NOT_UPDATING"},
        "route_optimized": True,
        "endpoint_url": DP_URL,
        "data_plane_info": {"query_info": {"endpoint_url": DP_URL, "authorization_details": DETAILS}},
    }
    doc.update(patch)
    return doc


def test_a_documented_answer_resolves() -> None:
    resolution = parse_resolution("fraud", document(), WORKSPACE)
    assert (resolution.url, resolution.authorization_details, resolution.route_optimized) == (DP_URL, DETAILS, True)
    assert resolution.ready == "READY" and resolution.endpoint_id == "abc"


def test_a_plain_endpoint_uses_the_workspace_path() -> None:
    resolution = parse_resolution(
        "plain", {"id": "x", "route_optimized": False, "state": {"ready": "READY"}}, WORKSPACE
    )
    assert resolution.url == f"{WORKSPACE}/serving-endpoints/plain/invocations"
    assert resolution.authorization_details is None


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"state": "READY"}, "state must be an object, got a string"),
        ({"state": {"ready": 1}}, "state.ready must be a string, got a number"),
        ({"data_plane_info": []}, "data_plane_info must be an object, got an array"),
        ({"data_plane_info": {"query_info": "x"}}, "data_plane_info.query_info must be an object"),
        ({"data_plane_info": {"query_info": {"endpoint_url": ["https://x"]}}}, "query_info.endpoint_url must be"),
        (
            {"data_plane_info": {"query_info": {"endpoint_url": DP_URL, "authorization_details": [{}]}}},
            "authorization_details must be a string, got an array",
        ),
        ({"route_optimized": "yes"}, "route_optimized must be true or false, got a string"),
        ({"id": 7}, "id must be a string, got a number"),
        ({"endpoint_url": {"u": 1}}, "endpoint_url must be a string, got an object"),
    ],
)
def test_a_malformed_answer_is_refused_naming_the_field(patch: dict[str, Any], field: str) -> None:
    with pytest.raises(BadMetadata, match="is malformed") as refused:
        parse_resolution("fraud", document(**patch), WORKSPACE)
    assert field in refused.value.message
    assert refused.value.status == 502 and refused.value.error_code == "BAD_GATEWAY"


@pytest.mark.parametrize(
    "url",
    [
        "http://abc.serving.example/1/serving-endpoints/fraud/invocations",
        "HTTP://127.0.0.1:9/x",
        "ftp://abc.serving.example/x",
        "https:///no-host",
        "https://user:pw@abc.serving.example/x",
        "//abc.serving.example/x",
    ],
)
def test_a_data_plane_url_that_is_not_https_to_a_host_is_refused(url: str) -> None:
    query_info = {"endpoint_url": url, "authorization_details": DETAILS}
    with pytest.raises(BadMetadata, match="tokens travel only over TLS"):
        parse_resolution("fraud", document(data_plane_info={"query_info": query_info}), WORKSPACE)


@pytest.mark.parametrize("details", [None, ""])
@pytest.mark.parametrize("where", ["query_info", "top_level"])
def test_a_route_optimized_url_without_authorization_details_is_refused(details: str | None, where: str) -> None:
    query_info: dict[str, Any] = {"authorization_details": details}
    if where == "query_info":
        query_info["endpoint_url"] = DP_URL
    with pytest.raises(BadMetadata, match=r"no authorization_details.*never sent to a data-plane host"):
        parse_resolution("fraud", document(data_plane_info={"query_info": query_info}), WORKSPACE)


# --- which token may go where ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [f"{WORKSPACE}/serving-endpoints/p/invocations", "https://WS.example:443/serving-endpoints/p/invocations"],
)
def test_the_workspace_token_goes_to_the_workspace(url: str) -> None:
    assert token_kind(url, None, WORKSPACE) == "workspace"


@pytest.mark.parametrize(
    "url",
    [
        DP_URL,  # another host
        "http://ws.example/serving-endpoints/p/invocations",  # the workspace host without TLS
        "https://ws.example:8443/serving-endpoints/p/invocations",  # another port
        "https://ws.example.attacker.example/x",
        "https://x@ws.example/serving-endpoints/p/invocations",
        "https://ws.example:99999/x",
    ],
)
def test_the_workspace_token_never_goes_anywhere_else(url: str) -> None:
    with pytest.raises(BadMetadata, match="refusing to send"):
        token_kind(url, None, WORKSPACE)


def test_data_plane_tokens_go_only_over_https() -> None:
    assert token_kind(DP_URL, DETAILS, WORKSPACE) == "data_plane"
    for url in ("http://abc.serving.example/x", "https:///x", "wss://abc.serving.example/x"):
        with pytest.raises(BadMetadata, match="refusing to send a data-plane token"):
            token_kind(url, DETAILS, WORKSPACE)


# --- what lookups cost ------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Workspace:
    """A fake metadata API answering `status` (and a valid document for 200), counting reads per name."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.reads: dict[str, int] = {}
        self.token_missing = False

    async def fetch(self, name: str) -> tuple[int, bytes]:
        self.reads[name] = self.reads.get(name, 0) + 1
        if self.token_missing:
            raise NoCredential("no workspace token yet", retry_after=1)
        return self.status, json.dumps(document(name=name)).encode()


def resolver(workspace: Workspace, clock: Clock, **options: Any) -> Resolver:
    return Resolver(workspace.fetch, workspace_url=WORKSPACE, ttl=300, clock=clock, **options)


@pytest.mark.parametrize(
    ("status", "error", "ttl"),
    [
        (404, EndpointNotFound, NEGATIVE_TTL),
        (429, UpstreamUnreachable, FAILURE_TTL),
        (500, UpstreamUnreachable, FAILURE_TTL),
    ],
)
async def test_failed_lookups_are_remembered_briefly(status: int, error: type[Exception], ttl: float) -> None:
    workspace, clock = Workspace(status), Clock()
    names = resolver(workspace, clock)
    for _ in range(50):
        with pytest.raises(error):
            await names.resolve("fraud")
    assert workspace.reads == {"fraud": 1}
    clock.now += ttl
    with pytest.raises(error):
        await names.resolve("fraud")
    assert workspace.reads == {"fraud": 2}


async def test_a_remembered_failure_says_when_to_come_back_and_a_success_clears_it() -> None:
    workspace, clock = Workspace(503), Clock()
    names = resolver(workspace, clock)
    with pytest.raises(UpstreamUnreachable) as first:
        await names.resolve("fraud")
    assert first.value.retry_after == FAILURE_TTL
    depths = []
    for _ in range(20):
        with pytest.raises(UpstreamUnreachable) as again:
            await names.resolve("fraud")
        depths.append(len(traceback.extract_tb(again.value.__traceback__)))
    assert again.value is first.value and len(set(depths)) == 1  # raised anew each time: no growing traceback
    workspace.status = 200
    clock.now += FAILURE_TTL
    assert (await names.resolve("fraud")).url == DP_URL
    assert "failed=[]" in repr(names)


async def test_malformed_metadata_is_remembered_and_counted_as_an_error() -> None:
    results: list[str] = []

    async def fetch(name: str) -> tuple[int, bytes]:
        return 200, json.dumps(document(state="READY")).encode()

    names = Resolver(fetch, workspace_url=WORKSPACE, ttl=300, clock=Clock(), on_resolve=results.append)
    for _ in range(3):
        with pytest.raises(BadMetadata):
            await names.resolve("fraud")
    assert results == ["error"]


async def test_no_workspace_token_yet_is_not_remembered() -> None:
    workspace, clock = Workspace(), Clock()
    workspace.token_missing = True
    names = resolver(workspace, clock)
    with pytest.raises(NoCredential):
        await names.resolve("fraud")
    workspace.token_missing = False
    assert (await names.resolve("fraud")).url == DP_URL


async def test_lookups_of_new_names_are_rate_limited_but_configured_and_known_names_are_not() -> None:
    workspace, clock = Workspace(404), Clock()
    names = resolver(workspace, clock, configured=frozenset({"mine"}), new_names=TokenBucket(10, 20, clock=clock))
    outcomes: list[str] = []
    for i in range(100):
        try:
            await names.resolve(f"typo-{i}")
        except EndpointNotFound:
            outcomes.append("404")
        except LookupsThrottled as throttled:
            assert throttled.status == 429 and throttled.retry_after == 1
            assert "too many lookups" in throttled.message
            outcomes.append("429")
    assert outcomes == ["404"] * 20 + ["429"] * 80
    assert len(workspace.reads) == 20
    workspace.status = 200
    assert (await names.resolve("mine")).url == DP_URL  # configured: exempt from the bucket
    clock.now += 1.0
    assert (await names.resolve("fraud")).url == DP_URL  # ten more a second
    assert sum(workspace.reads.values()) == 22


async def test_only_configured_names_are_looked_up_with_only_configured() -> None:
    workspace, clock = Workspace(), Clock()
    names = resolver(workspace, clock, configured=frozenset({"fraud"}), only_configured=True)
    assert (await names.resolve("fraud")).url == DP_URL
    with pytest.raises(EndpointNotFound, match=r"not configured.*--only-configured-endpoints"):
        await names.resolve("other")
    assert workspace.reads == {"fraud": 1}


@pytest.mark.parametrize("name", ["../../../api/2.0/preview/scim/v2/Me#", "a/b", "x" * 65, "", "a b", "é"])
async def test_names_that_are_not_endpoint_names_are_never_looked_up(name: str) -> None:
    workspace, clock = Workspace(), Clock()
    names = resolver(workspace, clock, configured=frozenset({name}))
    with pytest.raises(EndpointNotFound, match="is not a serving endpoint name"):
        await names.resolve(name)
    assert workspace.reads == {}


async def test_concurrent_callers_of_one_new_name_spend_one_lookup() -> None:
    workspace, clock = Workspace(), Clock()
    names = resolver(workspace, clock, new_names=TokenBucket(1, 1, clock=clock))
    results = await asyncio.gather(*(names.resolve("fraud") for _ in range(10)))
    assert {r.url for r in results} == {DP_URL}
    assert workspace.reads == {"fraud": 1}
