"""Endpoint resolution: name -> (invocation URL, authorization details, route-optimized?), cached.

Rules:
1. Resolutions come from `GET /api/2.0/serving-endpoints/{name}`; one lookup per name at a time.
2. A resolution older than `ttl` is still served while a background lookup refreshes it (refresh
   ahead), so no request waits on the workspace API for a known name, and a workspace outage does not
   stop data-plane traffic. A failed refresh is tried again after `RETRY_AFTER_FAILURE` seconds.
3. A failed lookup of a name with no known resolution is remembered: unknown names (404) for
   `NEGATIVE_TTL`, other failures (429, 5xx, refusals, malformed answers) for `FAILURE_TTL`, so a caller
   looping on a name does not flood the API. Only "no workspace token yet" is not remembered.
4. `recheck` (after a data-plane 403/404) looks the name up now, rate-limited per name, to find a
   recreated endpoint; `on_change(old)` runs whenever a name's resolution changes or disappears.
5. Metadata is untrusted input: it must have the documented shape, a route-optimized endpoint's URL must
   be https and come with its authorization details, or the answer is refused (`BadMetadata`, 502).
6. Names that are not valid endpoint names are never looked up. With `only_configured`, neither is any
   name outside `configured`. Lookups of other names without a known resolution are rate-limited
   (`new_names`, a token bucket; configured names are exempt): beyond it they get `LookupsThrottled` (429).
`parse_resolution` is pure.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar
from urllib.parse import quote, urlsplit

from cachetools import LRUCache
from multidict import CIMultiDict

from proxy import routing
from proxy.errors import (
    BadMetadata,
    EndpointNotFound,
    LookupsThrottled,
    NoCredential,
    SidecarError,
    UpstreamUnreachable,
    WorkspaceRefused,
)
from proxy.logs import untrusted_text
from proxy.ratelimit import TokenBucket

NEGATIVE_TTL = 10.0
FAILURE_TTL = 5.0
RETRY_AFTER_FAILURE = 10.0
RECHECK_INTERVAL = 5.0  # at most one re-resolution per name this often, however many 403/404 come
MAX_CACHED = 1024
NEW_NAME_LOOKUPS_PER_SECOND = 10.0
NEW_NAME_LOOKUPS_BURST = 20

V = TypeVar("V")


def store_bounded(found: dict[str, V], name: str, value: V) -> None:
    """`found[name] = value`, the oldest name dropped first when MAX_CACHED are held. A plain dict rather
    than an LRU cache: reading it is on every request's path, and a hit must not reorder anything."""
    if name not in found and len(found) >= MAX_CACHED:
        del found[next(iter(found))]
    found[name] = value


@dataclass(frozen=True)
class Resolution:
    name: str
    endpoint_id: str
    url: str  # the invocation URL
    authorization_details: str | None  # None: not route-optimized, use the workspace token
    route_optimized: bool
    ready: str = "READY"


_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", bool: "true or false"}


def _field(doc: Mapping[str, Any], key: str, kind: type, name: str, where: str = "") -> Any:
    """`doc[key]` when it is absent, null or of `kind`; BadMetadata naming the field otherwise."""
    value = doc.get(key)
    if value is None or isinstance(value, kind):
        return value
    raise BadMetadata(
        f"workspace metadata for endpoint '{name}' is malformed: {where}{key} must be {_JSON_TYPES[kind]}, "
        f"got {_JSON_TYPES.get(type(value), 'a number')}"
    )


def check_data_plane_url(name: str, url: str) -> str:
    """`url` if a data-plane token may be sent to it: https, a host, no user info. BadMetadata otherwise."""
    parts = urlsplit(url)
    origin = f"{parts.scheme}://{parts.hostname or ''}"
    if parts.scheme != "https" or not parts.hostname or parts.username is not None or parts.password is not None:
        raise BadMetadata(
            f"endpoint '{name}' refused: its data-plane URL ({origin}) is not an https URL of a host; "
            "tokens travel only over TLS"
        )
    return url


def parse_resolution(name: str, doc: Mapping[str, Any], workspace_url: str) -> Resolution:
    """Resolution from an endpoint's metadata document; plain endpoints use the workspace path (rule 5)."""
    endpoint_id = _field(doc, "id", str, name) or ""
    ready = _field(_field(doc, "state", dict, name) or {}, "ready", str, name, "state.") or ""
    route_optimized = _field(doc, "route_optimized", bool, name) or False
    top_url = _field(doc, "endpoint_url", str, name)
    data_plane_info = _field(doc, "data_plane_info", dict, name) or {}
    query_info = _field(data_plane_info, "query_info", dict, name, "data_plane_info.") or {}
    where = "data_plane_info.query_info."
    url = _field(query_info, "endpoint_url", str, name, where) or top_url
    details = _field(query_info, "authorization_details", str, name, where) or None
    if route_optimized and url:
        if details is None:
            raise BadMetadata(
                f"route-optimized endpoint '{name}' refused: its metadata has an endpoint_url but no "
                "authorization_details, and the workspace token is never sent to a data-plane host"
            )
        return Resolution(name, endpoint_id, check_data_plane_url(name, url), details, True, ready)
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


@dataclass(frozen=True)
class _Failure:
    error: SidecarError
    until: float


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
        configured: frozenset[str] = frozenset(),
        only_configured: bool = False,
        new_names: TokenBucket | None = None,
    ) -> None:
        self._fetch = fetch
        self._workspace_url = workspace_url
        self._ttl = ttl
        # A plain dict (`store_bounded`): `peek` is on every request's path.
        self._found: dict[str, _Entry] = {}
        self._failed: LRUCache[str, _Failure] = LRUCache(MAX_CACHED)
        self._inflight: dict[str, asyncio.Task[Resolution]] = {}
        self._rechecked: dict[str, float] = {}
        self._clock = clock
        self._on_resolve = on_resolve or (lambda _result: None)
        self._on_change = on_change
        self._configured = configured
        self._only_configured = only_configured
        self._new_names = new_names or TokenBucket(NEW_NAME_LOOKUPS_PER_SECOND, NEW_NAME_LOOKUPS_BURST, clock=clock)

    def __repr__(self) -> str:
        return f"Resolver(cached={sorted(self._found)}, failed={sorted(self._failed)}, new_names={self._new_names!r})"

    def known(self) -> list[str]:
        """The names resolved and cached now, sorted."""
        return sorted(self._found)

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
        failure = self._failed.get(name)
        if failure is not None and self._clock() < failure.until:
            raise failure.error.with_traceback(None)  # rule 3 (a fresh traceback: it is raised again and again)
        if name not in self._inflight:
            self._admit_lookup(name)
        return await asyncio.shield(self._lookup_task(name))

    def _admit_lookup(self, name: str) -> None:
        """Raise unless a workspace lookup of `name`, which has no known resolution, may start (rule 6)."""
        if not routing.is_valid_name(name):
            raise EndpointNotFound(f"'{name}' is not a serving endpoint name (letters, digits, - and _)")
        if name in self._configured:
            return
        if self._only_configured:
            raise EndpointNotFound(
                f"serving endpoint '{name}' is not configured: this sidecar serves only its --endpoint names "
                "(--only-configured-endpoints)"
            )
        if not self._new_names.take():
            raise LookupsThrottled(
                f"too many lookups of endpoint names not seen before (at most {self._new_names.rate:g} a second); "
                "retry later, or configure the endpoint with --endpoint",
                retry_after=max(1, math.ceil(self._new_names.wait())),
            )

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
        except EndpointNotFound as error:
            self._remember_failure(name, error, NEGATIVE_TTL)
            old = self._found.pop(name, None)
            if old is not None:
                await self._changed(old.resolution)
            raise
        except Exception as error:
            entry = self._found.get(name)
            if entry is not None:
                entry.fresh_until = self._clock() + RETRY_AFTER_FAILURE
            elif isinstance(error, SidecarError) and not isinstance(error, NoCredential):
                self._remember_failure(name, error, FAILURE_TTL)
            raise
        self._failed.pop(name, None)
        old = self._found.get(name)
        store_bounded(self._found, name, _Entry(resolution, self._clock() + self._ttl))
        if old is not None and old.resolution != resolution:
            await self._changed(old.resolution)
        return resolution

    def _remember_failure(self, name: str, error: SidecarError, ttl: float) -> None:
        if error.retry_after is None and not isinstance(error, EndpointNotFound):
            error.retry_after = math.ceil(ttl)  # the same answer comes back until then
        self._failed[name] = _Failure(error, self._clock() + ttl)

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
            raise EndpointNotFound(f"serving endpoint '{name}' does not exist in this workspace")
        try:
            resolution = parse_resolution(name, _metadata_document(name, status, body), self._workspace_url)
        except SidecarError:
            self._on_resolve("error")
            raise
        self._on_resolve("success")
        return resolution


def _metadata_document(name: str, status: int, body: bytes) -> Mapping[str, Any]:
    """The JSON object of a metadata answer; UpstreamUnreachable for a failure, BadMetadata for non-JSON."""
    if status != 200:
        raise UpstreamUnreachable(f"workspace API answered HTTP {status} for endpoint '{name}'")
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise BadMetadata(f"workspace metadata for endpoint '{name}' is not a JSON object")
    return doc


class TokenSource(Protocol):
    async def get(self) -> str: ...

    def invalidate(self, access_token: str) -> None: ...


class HttpFetch(Protocol):
    async def __call__(
        self, method: str, url: str, *, headers: Mapping[str, str], body: bytes | None = None
    ) -> tuple[int, CIMultiDict[str], bytes]: ...


async def workspace_get(http: HttpFetch, token: TokenSource, url: str) -> tuple[int, CIMultiDict[str], bytes]:
    """GET a workspace API URL with the workspace token; a 401 mints a new token and tries once more."""
    for attempt in range(2):
        access_token = await token.get()
        headers = {"Authorization": f"Bearer {access_token}", "Accept": "application/json"}
        status, reply_headers, body = await http("GET", url, headers=headers)
        if status == 401 and attempt == 0:
            token.invalidate(access_token)
            continue
        return status, reply_headers, body
    raise AssertionError("unreachable")


def metadata_fetcher(http: HttpFetch, token: TokenSource, workspace_url: str) -> MetadataFetch:
    """GET an endpoint's metadata with the workspace token (`workspace_get`).

    401/403 that persist become `WorkspaceRefused` with the workspace's own error code and message.
    """

    async def fetch(name: str) -> tuple[int, bytes]:
        status, _, body = await workspace_get(
            http, token, f"{workspace_url}/api/2.0/serving-endpoints/{quote(name, safe='')}"
        )
        if status in (401, 403):
            code, message = _error_fields(body)
            raise WorkspaceRefused(status, code, f"workspace API refused endpoint '{name}': {message}")
        return status, body

    return fetch


def _error_fields(body: bytes) -> tuple[str, str]:
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        return "PERMISSION_DENIED", untrusted_text(body[:1000].decode(errors="replace"))
    code, message = doc.get("error_code") or "PERMISSION_DENIED", doc.get("message") or ""
    return untrusted_text(str(code), limit=64), untrusted_text(str(message))  # cut and redacted: shown to callers
