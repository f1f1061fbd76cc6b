"""A worker's copies of its parent's resolutions and tokens, behind the interfaces the forwarder uses
(`endpoints.Resolutions`, `credentials.cache.TokenSources`), so the forwarder does not know it runs in a worker.

Rules:
1. The parent is the one authority: it resolves names and fetches tokens; a worker never calls the
   workspace. The parent sends every token it obtains (refreshes included) and every change of a
   resolution to all workers, which keep them in memory: the data path's look-ups stay synchronous.
2. What a worker lacks (a name it has not seen, a token after a 401) it asks the parent for over the
   channel, once per name or credential at a time in this worker (single flight); the parent's Resolver
   and Credentials single-flight across workers, so metadata reads and token grants do not grow with N.
3. A 401 in one worker: its token is dropped here and the parent is told (`invalidate`), which drops it
   too if it is still the current one; the next ask mints one new token, and the parent sends it to
   every worker. Other workers' tokens are replaced as soon as it arrives.
4. Resolutions are refreshed ahead by use, as in one process: while a name is in use a worker nudges the
   parent at most every NUDGE_INTERVAL s, and the parent's `peek` refreshes it when it is stale.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Protocol

from proxy.credentials import schedule
from proxy.credentials.targets import token_kind
from proxy.endpoints import MAX_CACHED, Resolution, store_bounded
from proxy.workers.channel import Message
from proxy.workers.wire import key_to_wire, resolution_from_wire, resolution_to_wire, token_from_wire

NUDGE_INTERVAL = 5.0


class Parent(Protocol):
    """The worker's end of the channel (`channel.Channel`)."""

    def note(self, op: str, **fields: Any) -> None: ...

    async def call(self, op: str, **fields: Any) -> Message: ...


def _consume(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: every waiter got it already


class RemoteToken:
    """One credential as the parent last sent it (a `CachedToken`)."""

    def __init__(
        self,
        parent: Parent,
        url: str,
        authorization_details: str | None,
        *,
        label: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._parent = parent
        self._key = key_to_wire(url, authorization_details)
        self._label = label  # the endpoint name, for the parent's metric label
        self._clock = clock
        self._token: tuple[str, float] | None = None  # (access token, expires at)
        self._asking: asyncio.Task[str] | None = None

    def __repr__(self) -> str:
        usable = "usable" if self.peek() is not None else "unusable"
        return f"RemoteToken({self._key['url'] or 'workspace'}, {usable}, asking={self._asking is not None})"

    @property
    def expires_at(self) -> float | None:
        return None if self._token is None else self._token[1]

    def peek(self) -> str | None:
        token = self._token
        if token is not None and schedule.is_usable(self._clock(), token[1]):
            return token[0]
        return None

    async def get(self) -> str:
        """The token, or the parent's (rule 2): NoCredential and other errors come back from there."""
        token = self.peek()
        if token is not None:
            return token
        if self._asking is None:
            self._asking = asyncio.get_running_loop().create_task(self._ask())
            self._asking.add_done_callback(_consume)
        return await asyncio.shield(self._asking)

    def invalidate(self, access_token: str) -> None:
        """Rule 3."""
        if self._token is not None and self._token[0] == access_token:
            self._token = None
        self._parent.note("invalidate", key=self._key, access_token=access_token)

    def update(self, access_token: str, expires_at: float) -> None:
        self._token = (access_token, expires_at)

    async def _ask(self) -> str:
        try:
            reply = await self._parent.call("token", key=self._key, label=self._label)
        finally:
            self._asking = None
        access_token, expires_at = token_from_wire(reply.get("token"))
        self.update(access_token, expires_at)
        return access_token


class RemoteCredentials:
    """The worker's tokens by credential (a `TokenSources`), filled by the parent.

    `for_target` refuses what `Credentials.for_target` refuses (`targets.token_kind`: the workspace token
    only to the workspace, data-plane tokens only over https), checked once per URL.
    """

    def __init__(self, parent: Parent, *, workspace_url: str = "", clock: Callable[[], float] = time.time) -> None:
        self._parent = parent
        self._clock = clock
        self.workspace_url = workspace_url  # set once the parent's settings are known
        self.workspace = RemoteToken(parent, "", None, clock=clock)
        self._data_plane: dict[tuple[str, str], RemoteToken] = {}
        self._workspace_urls: set[str] = set()  # URLs checked for the workspace token

    def __repr__(self) -> str:
        return f"RemoteCredentials(workspace={self.workspace!r}, data_plane={len(self._data_plane)})"

    def for_target(self, url: str, authorization_details: str | None, *, label: str) -> RemoteToken:
        """BadMetadata when no token may go to `url`; nothing is asked for or sent then."""
        if authorization_details is None:
            if url not in self._workspace_urls:
                token_kind(url, None, self.workspace_url)
                if len(self._workspace_urls) > MAX_CACHED:
                    self._workspace_urls.clear()
                self._workspace_urls.add(url)
            return self.workspace
        found = self._data_plane.get((url, authorization_details))
        if found is None:
            token_kind(url, authorization_details, self.workspace_url)
            found = self._entry((url, authorization_details), label)
        return found

    def update(self, key: tuple[str, str] | None, access_token: str, expires_at: float) -> None:
        """The parent obtained a token (rule 1); it has checked where that token may go."""
        entry = self.workspace if key is None else self._data_plane.get(key) or self._entry(key, "")
        entry.update(access_token, expires_at)

    def _entry(self, key: tuple[str, str], label: str) -> RemoteToken:
        entry = self._data_plane[key] = RemoteToken(self._parent, key[0], key[1], label=label, clock=self._clock)
        return entry

    def forget(self, key: tuple[str, str]) -> None:
        """The parent stopped refreshing this credential (its endpoint was recreated or deleted)."""
        self._data_plane.pop(key, None)


class RemoteResolver:
    """The worker's resolutions by name (a `Resolutions`), filled by the parent."""

    def __init__(
        self, parent: Parent, *, clock: Callable[[], float] = time.monotonic, nudge_interval: float = NUDGE_INTERVAL
    ) -> None:
        self._parent = parent
        self._clock = clock
        self._nudge_interval = nudge_interval
        self._known: dict[str, Resolution] = {}  # `store_bounded`: `peek` is on every request's path
        self._nudge_at: dict[str, float] = {}
        self._asking: dict[str, asyncio.Task[Resolution]] = {}

    def __repr__(self) -> str:
        return f"RemoteResolver(known={sorted(self._known)}, asking={sorted(self._asking)})"

    def cached(self, name: str) -> Resolution | None:
        return self._known.get(name)

    def known(self) -> list[str]:
        """The names this worker knows now (the endpoint list of the local routes)."""
        return sorted(self._known)

    def peek(self, name: str) -> Resolution | None:
        resolution = self._known.get(name)
        if resolution is not None:
            now = self._clock()
            if now >= self._nudge_at.get(name, 0.0):  # rule 4
                self._nudge_at[name] = now + self._nudge_interval
                self._parent.note("nudge", name=name)
        return resolution

    async def resolve(self, name: str) -> Resolution:
        known = self.peek(name)
        if known is not None:
            return known
        task = self._asking.get(name)
        if task is None:
            task = self._asking[name] = asyncio.get_running_loop().create_task(self._ask(name))
            task.add_done_callback(_consume)
        return await asyncio.shield(task)

    async def recheck(self, stale: Resolution) -> Resolution | None:
        """The parent rate-limits and single-flights rechecks (`Resolver.recheck`)."""
        reply = await self._parent.call("recheck", resolution=resolution_to_wire(stale))
        found = reply.get("resolution")
        if found is None:
            return None
        fresh = resolution_from_wire(found)
        self.update(fresh.name, fresh)
        return fresh

    def update(self, name: str, resolution: Resolution | None) -> None:
        """The parent resolved `name` anew, or found it gone (None)."""
        if resolution is None:
            self._known.pop(name, None)
            self._nudge_at.pop(name, None)
            return
        if name not in self._known:
            if len(self._nudge_at) > 2 * MAX_CACHED:
                self._nudge_at.clear()  # names dropped from the bounded cache
            self._nudge_at[name] = self._clock() + self._nudge_interval  # the parent has just resolved it
        store_bounded(self._known, name, resolution)

    async def _ask(self, name: str) -> Resolution:
        try:
            reply = await self._parent.call("resolve", name=name)
        finally:
            self._asking.pop(name, None)
        resolution = resolution_from_wire(reply.get("resolution"))
        self.update(name, resolution)
        return resolution
