"""The shared state every handler of one emulator reads: settings, knobs, counters, registry, keys, URLs."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from proxy.emulator.counters import Counters
from proxy.emulator.endpoints import Incarnation, Registry
from proxy.emulator.faults import Faults
from proxy.emulator.settings import EmulatorSettings
from proxy.emulator.tokens import TokenAuthority, WorkloadIssuer


@dataclass
class EmulatorState:
    """One emulator's state. ``workspace_url`` has no trailing slash; ``clock`` is Unix seconds."""

    settings: EmulatorSettings
    faults: Faults
    counters: Counters
    registry: Registry
    authority: TokenAuthority
    workload: WorkloadIssuer
    workspace_url: str
    scheme: str
    clock: Callable[[], float] = field(default=time.time)

    @property
    def token_endpoint(self) -> str:
        return f"{self.workspace_url}/oidc/v1/token"

    def endpoint_url(self, incarnation: Incarnation) -> str:
        """Route-optimized: its own data-plane port; plain: the workspace invocation path."""
        if incarnation.port is None:
            return f"{self.workspace_url}/serving-endpoints/{incarnation.name}/invocations"
        host = self.settings.host if ":" not in self.settings.host else f"[{self.settings.host}]"
        return (
            f"{self.scheme}://{host}:{incarnation.port}/"
            f"{self.settings.workspace_id}/serving-endpoints/{incarnation.name}/invocations"
        )
