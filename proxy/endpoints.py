"""Endpoint resolution: name -> (invocation URL, authorization details, route-optimized?), cached.

Rules:
1. Resolutions come from `GET /api/2.0/serving-endpoints/{name}`; one lookup per name at a time.
2. A resolution older than `ttl` is still served while a background lookup refreshes it (refresh
   ahead), so no request waits on the workspace API for a known name, and a workspace outage does not
   stop data-plane traffic. A failed refresh is tried again after `RETRY_AFTER_FAILURE` seconds.
3. Unknown names are cached for `NEGATIVE_TTL`, so a caller looping on a typo does not flood the API.
4. `recheck` (after a data-plane 403/404) looks the name up now, rate-limited per name, to find a
   recreated endpoint; `on_change(old)` runs whenever a name's resolution changes or disappears.
`parse_resolution` is pure.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from cachetools import LRUCache, TTLCache
from multidict import CIMultiDict

from proxy.errors import EndpointNotFound, SidecarError, UpstreamUnreachable, WorkspaceRefused

NEGATIVE_TTL = 10.0
RETRY_AFTER_FAILURE = 10.0
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


class Resolutions(Protocol):
    """What the forwarder asks of name resolution: a `Resolver`, or a worker's copy of its parent's."""

    def cached(self, name: str) -> Resolution | None:
        """The known resolution of `name`, or None; never looks anything up."""

    def peek(self, name: str) -> Resolution | None:
        """The known resolution without waiting (a stale one is refreshed in the background), or None."""

    async def resolve(self, name: str) -> Resolution:
        """The resolution of `name`, looked up if unknown; EndpointNotFound or another SidecarError."""

    async def recheck(self, stale: Resolution) -> Resolution | None:
        """A newer resolution than `stale` (the endpoint was recreated), or None (see `Resolver.recheck`)."""


@dataclass
class _Entry:
    resolution: Resolution
    fresh_until: float


class Resolver:
    def __init__(
        self,
        fetch: MetadataFetch,
        *,
        workspace_url: str,
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
        on_resolve: Callable[[str], None] | None = None,
        on_change: Callable[[Resolution], Awaitable[None]] | None = None,
    ) -> None:
        self._fetch = fetch
        self._workspace_url = workspace_url
        self._ttl = ttl
        self._found: LRUCache[str, _Entry] = LRUCache(MAX_CACHED)
        self._missing: TTLCache[str, EndpointNotFound] = TTLCache(MAX_CACHED, NEGATIVE_TTL, timer=clock)
        self._inflight: dict[str, asyncio.Task[Resolution]] = {}
        self._rechecked: dict[str, float] = {}
        self._clock = clock
        self._on_resolve = on_resolve or (lambda _result: None)
        self._on_change = on_change

    def __repr__(self) -> str:
        return f"Resolver(cached={sorted(self._found)}, missing={sorted(self._missing)})"

    def cached(self, name: str) -> Resolution | None:
        entry = self._found.get(name)
        return None if entry is None else entry.resolution

    def peek(self, name: str) -> Resolution | None:
        """The known resolution of `name` without waiting (refreshed in the background when stale), or None."""
        entry = self._found.get(name)
        if entry is None:
            return None
        if self._clock() >= entry.fresh_until and name not in self._inflight:
            self._lookup_task(name)  # refresh ahead; this caller keeps the known resolution (rule 2)
        return entry.resolution

    async def resolve(self, name: str) -> Resolution:
        entry = self._found.get(name)
        if entry is not None:
            if self._clock() >= entry.fresh_until and name not in self._inflight:
                self._lookup_task(name)  # refresh ahead; this caller keeps the known resolution (rule 2)
            return entry.resolution
        missing = self._missing.get(name)
        if missing is not None:
            raise missing
        return await asyncio.shield(self._lookup_task(name))

    async def recheck(self, stale: Resolution) -> Resolution | None:
        """A newer resolution than `stale` (the endpoint was recreated), or None if there is none.

        Rate-limited per name, so a persistent 403/404 costs at most one metadata read per interval; callers
        that come while that read is in flight wait for it. A workspace failure answers None (the caller
        then returns the upstream's own answer); a deleted endpoint raises EndpointNotFound.
        """
        current = self.cached(stale.name)
        if current is not None and current != stale:
            return current
        task = self._inflight.get(stale.name)
        if task is None:
            now = self._clock()
            if now - self._rechecked.get(stale.name, -RECHECK_INTERVAL) < RECHECK_INTERVAL:
                return None
            self._rechecked[stale.name] = now
            task = self._lookup_task(stale.name)
        try:
            fresh = await asyncio.shield(task)
        except EndpointNotFound:
            raise
        except SidecarError:
            return None
        return None if fresh == stale else fresh

    def _lookup_task(self, name: str) -> asyncio.Task[Resolution]:
        task = self._inflight.get(name)
        if task is None:
            task = self._inflight[name] = asyncio.get_running_loop().create_task(self._lookup(name))
            task.add_done_callback(self._lookup_done(name))
        return task

    def _lookup_done(self, name: str) -> Callable[[asyncio.Task[Resolution]], None]:
        def done(task: asyncio.Task[Resolution]) -> None:
            self._inflight.pop(name, None)
            if not task.cancelled():
                task.exception()  # a background refresh's failure is handled in _lookup; nobody else awaits it

        return done

    async def _lookup(self, name: str) -> Resolution:
        try:
            resolution = await self._read(name)
        except EndpointNotFound:
            old = self._found.pop(name, None)
            if old is not None:
                await self._changed(old.resolution)
            raise
        except Exception:
            entry = self._found.get(name)
            if entry is not None:
                entry.fresh_until = self._clock() + RETRY_AFTER_FAILURE
            raise
        old = self._found.get(name)
        self._found[name] = _Entry(resolution, self._clock() + self._ttl)
        if old is not None and old.resolution != resolution:
            await self._changed(old.resolution)
        return resolution

    async def _changed(self, old: Resolution) -> None:
        if self._on_change is not None:
            await self._on_change(old)

    async def _read(self, name: str) -> Resolution:
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
        self._on_resolve("success")
        return parse_resolution(name, doc, self._workspace_url)


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
