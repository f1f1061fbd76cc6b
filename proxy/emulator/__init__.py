"""Emulated Databricks workspace: control plane, route-optimized data plane and fault knobs.

Start one in tests with ``async with Emulator(EmulatorSettings()) as emu`` (see ``server``), or from
the command line with ``serving-sidecar emulator`` (see ``cli``). Model answers are documented in
``models``, counters in ``counters``, knobs in ``faults``, admin routes in ``admin``.
"""

from proxy.emulator.counters import Counters
from proxy.emulator.faults import Faults, FaultsError, PlannedFailure
from proxy.emulator.server import Emulator
from proxy.emulator.settings import (
    EmulatorSettings,
    EndpointSpec,
    FederationPolicy,
    SettingsError,
    default_endpoints,
    load_settings,
)

__all__ = [
    "Counters",
    "Emulator",
    "EmulatorSettings",
    "EndpointSpec",
    "Faults",
    "FaultsError",
    "FederationPolicy",
    "PlannedFailure",
    "SettingsError",
    "default_endpoints",
    "load_settings",
]
