"""The endpoint registry: which incarnation of each endpoint exists now, and its id and data-plane port.

Rules:
1. An incarnation is (name, generation). Its id is 32 lowercase hex characters derived from the
   workspace id, name and generation, so ids are stable across runs and change on recreation.
2. Route-optimized incarnations own one data-plane port each; plain ones own none.
3. Old incarnations are kept (their ports keep listening) but are no longer current: lookups by
   port return them with ``current=False`` so the data plane can answer 404.
No I/O here: the server binds ports and tells the registry.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from proxy.emulator.settings import EndpointSpec

CREATOR = "emulator@example.com"


@dataclass(frozen=True)
class Incarnation:
    """One life of an endpoint. ``port`` is its data-plane port (None when not route-optimized)."""

    spec: EndpointSpec
    generation: int
    endpoint_id: str
    created_ms: int
    port: int | None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def object_path(self) -> str:
        return f"/serving-endpoints/{self.endpoint_id}"


def endpoint_id(workspace_id: str, name: str, generation: int) -> str:
    """Rule 1."""
    return hashlib.sha256(f"{workspace_id}/{name}/{generation}".encode()).hexdigest()[:32]


class Registry:
    """Current and past incarnations, by name, id and data-plane port."""

    def __init__(self, workspace_id: str) -> None:
        self._workspace_id = workspace_id
        self._current: dict[str, Incarnation] = {}
        self._by_port: dict[int, Incarnation] = {}
        self._by_id: dict[str, Incarnation] = {}

    def __repr__(self) -> str:
        items = ", ".join(f"{n}={i.endpoint_id[:8]}@{i.port}" for n, i in self._current.items())
        return f"Registry({items})"

    def add(self, spec: EndpointSpec, *, port: int | None, now_ms: int) -> Incarnation:
        """Create the first or next incarnation of ``spec.name`` and make it current."""
        previous = self._current.get(spec.name)
        generation = 0 if previous is None else previous.generation + 1
        incarnation = Incarnation(
            spec=spec,
            generation=generation,
            endpoint_id=endpoint_id(self._workspace_id, spec.name, generation),
            created_ms=now_ms,
            port=port,
        )
        self._current[spec.name] = incarnation
        self._by_id[incarnation.endpoint_id] = incarnation
        if port is not None:
            self._by_port[port] = incarnation
        return incarnation

    def get(self, name: str) -> Incarnation | None:
        """The current incarnation of ``name``."""
        return self._current.get(name)

    def current(self) -> list[Incarnation]:
        """All current incarnations, in creation order of their names."""
        return list(self._current.values())

    def by_port(self, port: int) -> Incarnation | None:
        """The incarnation (current or not) that owns a data-plane port."""
        return self._by_port.get(port)

    def current_by_id(self, endpoint_id: str) -> Incarnation | None:
        """The current incarnation with this id; None for unknown or recreated ids."""
        incarnation = self._by_id.get(endpoint_id)
        if incarnation is None or self._current.get(incarnation.name) is not incarnation:
            return None
        return incarnation

    def is_current(self, incarnation: Incarnation) -> bool:
        return self._current.get(incarnation.name) is incarnation

    def ports(self) -> list[int]:
        return list(self._by_port)
