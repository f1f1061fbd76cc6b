"""Endpoint resolution: name -> (invocation URL, authorization details, route-optimized?), cached.

Resolutions come from `GET /api/2.0/serving-endpoints/{name}` and are cached for `ttl` seconds; unknown
names are cached for `NEGATIVE_TTL` so a caller looping on a typo does not flood the workspace API.
One lookup per name at a time. `invalidate(name)` forgets a resolution (the endpoint answered 404 or was
recreated). `parse_resolution` is pure.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from cachetools import TTLCache
from multidict import CIMultiDict

from proxy.errors import EndpointNotFound, UpstreamUnreachable, WorkspaceRefused

NEGATIVE_TTL = 10.0
RECHECK_INTERVAL = 5.0  # at most one re-resolution per name this often, however many 403/404 come
MAX_CACHED = 1024


@dataclass(frozen=True)
class Resolution:
    name: str
    endpoint_id: str
    url: str  # the invocation URL
    authorization_details: str | None  # None: not route-optimized, use the workspace token
    route_optimized: bool
    ready: str = "READY"


def parse_resolution(name: str, doc: Mapping[str, Any], workspace_url: str) -> Resolution:
    """Resolution from an endpoint's metadata document; plain endpoints use the workspace path."""
    endpoint_id = str(doc.get("id") or "")
    ready = str((doc.get("state") or {}).get("ready") or "")
    query_info = (doc.get("data_plane_info") or {}).get("query_info") or {}
    if doc.get("route_optimized") and query_info.get("endpoint_url"):
        return Resolution(
            name=name,
            endpoint_id=endpoint_id,
            url=str(query_info["endpoint_url"]),
            authorization_details=str(query_info.get("authorization_details") or "") or None,
            route_optimized=True,
            ready=ready,
        )
    return Resolution(
        name=name,
        endpoint_id=endpoint_id,
        url=f"{workspace_url}/serving-endpoints/{name}/invocations",
        authorization_details=None,
        route_optimized=False,
        ready=ready,
    )


MetadataFetch = Callable[[str], Awaitable[tuple[int, bytes]]]


class Resolver:
    def __init__(
        self,
        fetch: MetadataFetch,
        *,
        workspace_url: str,
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
        on_resolve: Callable[[str], None] | None = None,
    ) -> None:
        self._fetch = fetch
        self._workspace_url = workspace_url
        self._found: TTLCache[str, Resolution] = TTLCache(MAX_CACHED, ttl, timer=clock)
        self._missing: TTLCache[str, EndpointNotFound] = TTLCache(MAX_CACHED, NEGATIVE_TTL, timer=clock)
        self._inflight: dict[str, asyncio.Task[Resolution]] = {}
        self._rechecked: dict[str, float] = {}
        self._clock = clock
        self._on_resolve = on_resolve or (lambda _result: None)

    def __repr__(self) -> str:
        return f"Resolver(cached={sorted(self._found)}, missing={sorted(self._missing)})"

    def cached(self, name: str) -> Resolution | None:
        return self._found.get(name)

    async def resolve(self, name: str) -> Resolution:
        found = self._found.get(name)
        if found is not None:
            return found
        missing = self._missing.get(name)
        if missing is not None:
            raise missing
        task = self._inflight.get(name)
        if task is None:
            task = self._inflight[name] = asyncio.get_running_loop().create_task(self._lookup(name))
            task.add_done_callback(lambda _t: self._inflight.pop(name, None))
        return await asyncio.shield(task)

    def invalidate(self, name: str) -> None:
        self._found.pop(name, None)

    async def recheck(self, stale: Resolution) -> Resolution | None:
        """A newer resolution than `stale` (the endpoint was recreated), or None if it is unchanged.

        Rate-limited per name, so a persistent 403/404 costs at most one metadata read per interval; callers
        that come while that read is in flight wait for it.
        """
        current = self._found.get(stale.name)
        if current is not None and current != stale:
            return current
        now = self._clock()
        if now - self._rechecked.get(stale.name, -RECHECK_INTERVAL) < RECHECK_INTERVAL:
            # Another caller's recheck may still be looking the name up: share its answer rather than
            # hand this caller the old host's 403/404.
            task = self._inflight.get(stale.name)
            if task is None:
                return None
            fresh = await asyncio.shield(task)
            return None if fresh == stale else fresh
        self._rechecked[stale.name] = now
        self.invalidate(stale.name)
        fresh = await self.resolve(stale.name)
        return None if fresh == stale else fresh

    async def _lookup(self, name: str) -> Resolution:
        try:
            status, body = await self._fetch(name)
        except Exception:
            self._on_resolve("error")
            raise
        if status == 404:
            self._on_resolve("not_found")
            error = EndpointNotFound(f"serving endpoint '{name}' does not exist in this workspace")
            self._missing[name] = error
            raise error
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if status != 200 or not isinstance(doc, dict):
            self._on_resolve("error")
            raise UpstreamUnreachable(f"workspace API answered HTTP {status} for endpoint '{name}'")
        resolution = parse_resolution(name, doc, self._workspace_url)
        self._found[name] = resolution
        self._on_resolve("success")
        return resolution


class TokenSource(Protocol):
    async def get(self) -> str: ...

    def invalidate(self, access_token: str) -> None: ...


class HttpFetch(Protocol):
    async def __call__(
        self, method: str, url: str, *, headers: Mapping[str, str], body: bytes | None = None
    ) -> tuple[int, CIMultiDict[str], bytes]: ...


def metadata_fetcher(http: HttpFetch, token: TokenSource, workspace_url: str) -> MetadataFetch:
    """GET an endpoint's metadata with the workspace token; a 401 mints a new token and tries once more.

    401/403 that persist become `WorkspaceRefused` with the workspace's own error code and message.
    """

    async def fetch(name: str) -> tuple[int, bytes]:
        url = f"{workspace_url}/api/2.0/serving-endpoints/{name}"
        for attempt in range(2):
            access_token = await token.get()
            headers = {"Authorization": f"Bearer {access_token}", "Accept": "application/json"}
            status, _, body = await http("GET", url, headers=headers)
            if status == 401 and attempt == 0:
                token.invalidate(access_token)
                continue
            if status in (401, 403):
                code, message = _error_fields(body)
                raise WorkspaceRefused(status, code, f"workspace API refused endpoint '{name}': {message}")
            return status, body
        raise AssertionError("unreachable")

    return fetch


def _error_fields(body: bytes) -> tuple[str, str]:
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        return "PERMISSION_DENIED", body[:200].decode(errors="replace")
    return str(doc.get("error_code") or "PERMISSION_DENIED"), str(doc.get("message") or "")
