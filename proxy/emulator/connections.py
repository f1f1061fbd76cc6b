"""Connection tracking: accepts, per-connection request counts, idle closes and deliberate drops.

aiohttp fixes ``keepalive_timeout`` per runner and offers no per-connection hooks, so the emulator
wraps the protocol factory of each listening socket (one call per accepted TCP connection) and
keeps its own state per connection.

Rules:
1. Every accepted connection is counted once, by plane, when the socket is accepted (before TLS).
2. ``close_after_requests = N``: the (N+1)-th request on a connection is not answered; the
   connection is aborted (TCP reset, no response byte). Admin routes are exempt.
3. ``idle_close_after = X``: a connection with no request in flight and no activity for more than
   X seconds is closed gracefully by the sweeper (which runs every few tens of milliseconds).
4. Both knobs apply to data-plane connections, and to control-plane ones only when
   ``connection_faults_on_control_plane`` is set.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from proxy.emulator.counters import Counters, Plane
from proxy.emulator.faults import Faults

HANDSHAKE_GRACE = 120.0
"""Seconds after which a connection that never completed its handshake is forgotten."""


@dataclass
class ConnectionState:
    """What the emulator knows about one accepted connection."""

    plane: Plane
    port: int
    opened_at: float
    last_active: float
    requests: int = 0
    in_flight: int = 0
    connected: bool = False


def faults_apply(state: ConnectionState, faults: Faults) -> bool:
    """Rule 4."""
    return state.plane == "data_plane" or faults.connection_faults_on_control_plane


def should_drop(state: ConnectionState, faults: Faults) -> bool:
    """Rule 2, decided before the arriving request is counted."""
    limit = faults.close_after_requests
    return limit is not None and faults_apply(state, faults) and state.requests >= limit


def is_idle_expired(state: ConnectionState, faults: Faults, now: float) -> bool:
    """Rule 3."""
    limit = faults.idle_close_after
    return (
        limit is not None and faults_apply(state, faults) and state.in_flight == 0 and now - state.last_active > limit
    )


class ConnectionTracker:
    """Per-connection state for every listener of one emulator."""

    def __init__(self, counters: Counters, faults: Faults, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._counters = counters
        self._faults = faults
        self._clock = clock
        self._states: dict[RequestHandler, ConnectionState] = {}

    def __repr__(self) -> str:
        return f"ConnectionTracker(open={len(self._states)})"

    def protocol_factory(self, server: web.Server, plane: Plane, port: int) -> Callable[[], Any]:
        """A factory for ``loop.create_server`` that records each accepted connection (rule 1)."""

        def make() -> RequestHandler:
            handler = server()
            now = self._clock()
            self._states[handler] = ConnectionState(plane=plane, port=port, opened_at=now, last_active=now)
            self._counters.connection_accepted(plane)
            return handler

        return make

    def state(self, request: web.BaseRequest) -> ConnectionState | None:
        """The state of the connection that carries ``request``."""
        return self._states.get(request.protocol)

    def request_started(self, state: ConnectionState) -> None:
        state.connected = True
        state.requests += 1
        state.in_flight += 1
        state.last_active = self._clock()

    def request_finished(self, state: ConnectionState) -> None:
        state.in_flight -= 1
        state.last_active = self._clock()

    def sweep(self, live: Iterable[RequestHandler]) -> int:
        """Close idle connections (rule 3) and forget dead ones; returns how many were closed."""
        now = self._clock()
        alive = set(live)
        closed = 0
        for handler, state in list(self._states.items()):
            if handler in alive:
                state.connected = True
                if is_idle_expired(state, self._faults, now):
                    # What aiohttp's own keep-alive timer does to an idle connection.
                    handler.force_close()
                    del self._states[handler]
                    closed += 1
            elif state.connected or now - state.opened_at > HANDSHAKE_GRACE:
                del self._states[handler]
        self._counters.idle_closed_connections += closed
        return closed

    def sweep_interval(self) -> float:
        """Seconds between sweeps: fine-grained while an idle limit is set."""
        limit = self._faults.idle_close_after
        return 0.2 if limit is None else min(0.2, max(0.01, limit / 5))


def abort(request: web.BaseRequest) -> None:
    """Drop the connection of ``request`` at once, without a response byte."""
    transport = request.transport
    if transport is not None:
        transport.abort()


async def wait_for_cancellation(limit: float = 5.0) -> None:
    """After ``abort`` aiohttp cancels the handler; wait for that, at most ``limit`` seconds."""
    await asyncio.sleep(limit)
