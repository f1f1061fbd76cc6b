"""The parent's side of rule 1 of `mirror`: workers' asks answered from the one Resolver and Credentials,
and every new token and resolution change sent to all workers.

Asks (calls): `resolve {name}`, `recheck {resolution}`, `token {key}`; notes: `nudge {name}` (a name in
use: refresh it ahead when stale), `invalidate {key, access_token}` (a worker saw a 401).
Sent to workers (notes): `token {key, token}` whenever a token is obtained, `forget_token {key}` and
`resolution {name, resolution | null}` when an endpoint was recreated or deleted.
"""

from __future__ import annotations

from collections.abc import Callable

from proxy.credentials.cache import Token
from proxy.credentials.sources import Credentials, TokenKey
from proxy.endpoints import Resolution, Resolver
from proxy.workers.channel import Message
from proxy.workers.wire import (
    key_from_wire,
    key_to_wire,
    resolution_from_wire,
    resolution_to_wire,
    token_to_wire,
)

Broadcast = Callable[..., None]  # (op, **fields): a note to every worker


class Authority:
    def __init__(self, resolver: Resolver, credentials: Credentials, broadcast: Broadcast) -> None:
        self._resolver = resolver
        self._credentials = credentials
        self.broadcast = broadcast

    def __repr__(self) -> str:
        return f"Authority({self._resolver!r}, {self._credentials!r})"

    async def on_call(self, op: str, message: Message) -> Message:
        if op == "resolve":
            resolution = await self._resolver.resolve(str(message.get("name")))
            return {"resolution": resolution_to_wire(resolution)}
        if op == "recheck":
            fresh = await self._resolver.recheck(resolution_from_wire(message.get("resolution")))
            return {"resolution": None if fresh is None else resolution_to_wire(fresh)}
        if op == "token":
            return await self._token(key_from_wire(message.get("key")), str(message.get("label") or ""))
        raise ValueError(f"unknown request {op!r}")

    def on_note(self, op: str, message: Message) -> None:
        if op == "nudge":
            self._resolver.peek(str(message.get("name")))
        elif op == "invalidate":
            self._invalidate(key_from_wire(message.get("key")), str(message.get("access_token")))
        else:
            raise ValueError(f"unknown note {op!r}")

    def token_obtained(self, key: TokenKey, token: Token) -> None:
        """The Credentials' hook: a token was fetched (first, refreshed or re-minted)."""
        url, details = key if key is not None else ("", None)
        self.broadcast(
            "token", key=key_to_wire(url, details), token=token_to_wire(token.access_token, token.expires_at)
        )

    def resolution_changed(self, old: Resolution) -> None:
        """The Resolver's `on_change`: `old` was replaced (recreated endpoint) or removed (deleted)."""
        current = self._resolver.cached(old.name)
        self.broadcast("resolution", name=old.name, resolution=None if current is None else resolution_to_wire(current))
        if old.authorization_details is not None and (current is None or current.url != old.url):
            self.broadcast("forget_token", key=key_to_wire(old.url, old.authorization_details))

    async def _token(self, key: TokenKey, label: str) -> Message:
        url, details = key if key is not None else ("", None)
        source = self._credentials.for_target(url, details, label=label)
        access_token = await source.get()
        expires_at = source.expires_at or 0.0
        return {"token": token_to_wire(access_token, expires_at)}

    def _invalidate(self, key: TokenKey, access_token: str) -> None:
        source = self._credentials.workspace if key is None else self._credentials.data_plane.get(key)
        if source is not None:
            source.invalidate(access_token)
