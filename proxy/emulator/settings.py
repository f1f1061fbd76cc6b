"""What an emulated workspace looks like: endpoints, clients, federation policies, TTLs.

Everything here is a plain dataclass plus the YAML loader. Nothing opens a socket.

Invariants:
1. Endpoint names are unique and match ``[A-Za-z0-9_-]{1,63}``.
2. ``EndpointSpec.served_models`` is never empty: it defaults to ``("<name>-1",)``.
3. ``load_settings`` raises only ``SettingsError``, whose message is one line naming the bad key.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast, get_args

import yaml

from proxy.emulator.faults import Faults, FaultsError, apply_patch

EndpointKind = Literal["custom", "feature", "chat", "embeddings", "echo"]
ENDPOINT_KINDS: tuple[str, ...] = get_args(EndpointKind)

DEFAULT_WORKSPACE_ID = "1444828305810485"
DEFAULT_ACCOUNT_ID = "7f3c2a1e-0b5d-4c8e-9a6f-1d2e3f4a5b6c"
DEFAULT_CLIENT_ID = "sidecar-sp"
DEFAULT_CLIENT_SECRET = "emulated-secret"
DEFAULT_WORKLOAD_ISSUER = "https://kubernetes.default.svc.cluster.local"
DEFAULT_WORKLOAD_SUBJECT = "system:serviceaccount:default:serving-sidecar"

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,63}$")


class SettingsError(ValueError):
    """A setting is invalid; the message is one line and names the offending key."""


@dataclass(frozen=True)
class EndpointSpec:
    """One serving endpoint of the emulated workspace.

    kind: ``custom`` (MLflow pyfunc, answers ``predictions``), ``feature`` (feature spec, answers
    ``outputs``), ``chat`` (agent: OpenAI chat completions, Responses API and completions shapes, streams
    with ``"stream": true``) or ``embeddings`` (OpenAI embeddings shape) or ``echo``
    (answers the request body byte for byte: a probe of exactly what reached the upstream).
    latency: seconds added before every answer (the ``latency`` fault knob overrides it).
    stream_interval: seconds between SSE events of a streamed chat answer.
    allowed_clients: client ids that hold CAN_QUERY; ``None`` means every client.
    """

    name: str
    kind: EndpointKind
    route_optimized: bool = True
    served_models: tuple[str, ...] = ()
    latency: float = 0.0
    stream_interval: float = 0.05
    allowed_clients: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise SettingsError(f"endpoint name {self.name!r} must match [A-Za-z0-9_-]{{1,63}}")
        if self.kind not in ENDPOINT_KINDS:
            raise SettingsError(f"endpoint {self.name}: kind must be one of {', '.join(ENDPOINT_KINDS)}")
        if not self.served_models:
            object.__setattr__(self, "served_models", (f"{self.name}-1",))
        _check_seconds(f"endpoint {self.name}: latency", self.latency)
        _check_seconds(f"endpoint {self.name}: stream_interval", self.stream_interval)

    def may_query(self, client_id: str) -> bool:
        """True when ``client_id`` holds CAN_QUERY on this endpoint."""
        return self.allowed_clients is None or client_id in self.allowed_clients


@dataclass(frozen=True)
class FederationPolicy:
    """A service-principal federation policy for the RFC 8693 token exchange.

    A subject token matches when its ``iss``, ``sub`` and one of its ``aud`` equal these values.
    audience: ``None`` means the workspace token endpoint URL (the SDK's default audience).
    client_id: the service principal the exchanged token acts as; ``None`` means the default client.
    """

    issuer: str = DEFAULT_WORKLOAD_ISSUER
    subject: str = DEFAULT_WORKLOAD_SUBJECT
    audience: str | None = None
    client_id: str | None = None


def default_endpoints() -> list[EndpointSpec]:
    """The demo set: a custom model, a feature spec, a streaming chat agent, an embedding model and one
    plain endpoint."""
    return [
        EndpointSpec("fraud-ro", "custom"),
        EndpointSpec("features-ro", "feature"),
        EndpointSpec("chat-ro", "chat"),
        EndpointSpec("embed-ro", "embeddings"),
        EndpointSpec("plain-model", "custom", route_optimized=False),
    ]


def _default_clients() -> dict[str, str]:
    return {DEFAULT_CLIENT_ID: DEFAULT_CLIENT_SECRET}


def _default_federation() -> list[FederationPolicy]:
    return [FederationPolicy()]


@dataclass
class EmulatorSettings:
    """Start-time configuration of an ``Emulator``.

    Ports 0 mean ephemeral. With ``data_port`` > 0, route-optimized endpoints get consecutive ports
    from that base (in order, and recreations take the next ones).
    ``cp_token_ttl`` / ``dp_token_ttl`` are seconds (floats allowed) and seed the same-named knobs.
    ``faults`` holds the other initial knob values; it is copied at start, never shared.
    """

    tls: bool = True
    host: str = "127.0.0.1"
    control_port: int = 0
    data_port: int = 0
    workspace_id: str = DEFAULT_WORKSPACE_ID
    account_id: str = DEFAULT_ACCOUNT_ID
    clients: dict[str, str] = field(default_factory=_default_clients)
    endpoints: list[EndpointSpec] = field(default_factory=default_endpoints)
    cp_token_ttl: float = 3600.0
    dp_token_ttl: float = 3600.0
    federation: list[FederationPolicy] = field(default_factory=_default_federation)
    workload_issuer: str = DEFAULT_WORKLOAD_ISSUER
    faults: Faults = field(default_factory=Faults)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``SettingsError`` unless the settings describe a workspace that can start."""
        if not self.workspace_id.isdigit():
            raise SettingsError(f"workspace_id must be numeric, got {self.workspace_id!r}")
        if not self.clients:
            raise SettingsError("clients must name at least one client_id: secret")
        names = [spec.name for spec in self.endpoints]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise SettingsError(f"endpoints: duplicate name {duplicates[0]!r}")
        for port_key in ("control_port", "data_port"):
            port = getattr(self, port_key)
            if not 0 <= port <= 65535:
                raise SettingsError(f"{port_key} must be within 0..65535, got {port}")
        _check_seconds("cp_token_ttl", self.cp_token_ttl)
        _check_seconds("dp_token_ttl", self.dp_token_ttl)

    @property
    def default_client_id(self) -> str:
        """The first configured client: the one ``Emulator.client_id`` reports."""
        return next(iter(self.clients))


def _check_seconds(key: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise SettingsError(f"{key} must be a finite number of seconds >= 0, got {value!r}")


# --- YAML -----------------------------------------------------------------------------------------

_TOP_KEYS = {
    "tls",
    "host",
    "control_port",
    "data_port",
    "workspace_id",
    "account_id",
    "clients",
    "endpoints",
    "cp_token_ttl",
    "dp_token_ttl",
    "federation",
    "workload_issuer",
    "faults",
}


def load_settings(path: Path) -> EmulatorSettings:
    """Read a YAML config file; raise ``SettingsError`` (one line) for any problem.

    Keys: workspace_id, account_id, clients (map id -> secret), endpoints (list of EndpointSpec fields),
    cp_token_ttl, dp_token_ttl, federation (list of FederationPolicy fields), workload_issuer,
    faults (knob values, as for ``POST /_emulator/faults``), tls, host, control_port, data_port.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError(f"cannot read config {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise SettingsError(f"config {path} is not UTF-8 text") from exc
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise SettingsError(f"config {path} is not valid YAML{where}") from exc
    return settings_from_mapping({} if document is None else document, source=str(path))


def settings_from_mapping(document: object, *, source: str = "config") -> EmulatorSettings:
    """Build settings from an already-parsed YAML/JSON document."""
    mapping = _mapping(document, source)
    unknown = sorted(set(mapping) - _TOP_KEYS)
    if unknown:
        raise SettingsError(f"{source}: unknown key {unknown[0]!r}")
    kwargs: dict[str, Any] = {}
    for key in ("tls",):
        if key in mapping:
            kwargs[key] = _typed(mapping[key], bool, key)
    for key in ("host", "workspace_id", "account_id", "workload_issuer"):
        if key in mapping:
            kwargs[key] = _text(mapping[key], key)
    for key in ("control_port", "data_port"):
        if key in mapping:
            kwargs[key] = _typed(mapping[key], int, key)
    for key in ("cp_token_ttl", "dp_token_ttl"):
        if key in mapping:
            kwargs[key] = _number(mapping[key], key)
    if "clients" in mapping:
        kwargs["clients"] = _clients(mapping["clients"])
    if "endpoints" in mapping:
        kwargs["endpoints"] = [
            _endpoint(item, i) for i, item in enumerate(_sequence(mapping["endpoints"], "endpoints"))
        ]
    if "federation" in mapping:
        items = _sequence(mapping["federation"], "federation")
        kwargs["federation"] = [_policy(item, i) for i, item in enumerate(items)]
    if "faults" in mapping:
        kwargs["faults"] = _faults(mapping["faults"])
    return EmulatorSettings(**kwargs)


def _mapping(value: object, key: str) -> Mapping[str, object]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise SettingsError(f"{key} must be a mapping with string keys")
    return cast(Mapping[str, object], value)


def _sequence(value: object, key: str) -> Sequence[object]:
    if not isinstance(value, list):
        raise SettingsError(f"{key} must be a list")
    return value


def _typed(value: object, kind: type, key: str) -> Any:
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
        raise SettingsError(f"{key} must be of type {kind.__name__}, got {value!r}")
    return value


def _text(value: object, key: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return cast(str, _typed(value, str, key))


def _number(value: object, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SettingsError(f"{key} must be a number, got {value!r}")
    return float(value)


def _clients(value: object) -> dict[str, str]:
    mapping = _mapping(value, "clients")
    return {client_id: _text(secret, f"clients.{client_id}") for client_id, secret in mapping.items()}


_ENDPOINT_KEYS = {f.name for f in dataclasses.fields(EndpointSpec)}
_POLICY_KEYS = {f.name for f in dataclasses.fields(FederationPolicy)}


def _endpoint(item: object, index: int) -> EndpointSpec:
    where = f"endpoints[{index}]"
    mapping = _mapping(item, where)
    unknown = sorted(set(mapping) - _ENDPOINT_KEYS)
    if unknown:
        raise SettingsError(f"{where}: unknown key {unknown[0]!r}")
    if "name" not in mapping or "kind" not in mapping:
        raise SettingsError(f"{where}: 'name' and 'kind' are required")
    kwargs: dict[str, Any] = {"name": _text(mapping["name"], f"{where}.name")}
    kwargs["kind"] = _text(mapping["kind"], f"{where}.kind")
    if "route_optimized" in mapping:
        kwargs["route_optimized"] = _typed(mapping["route_optimized"], bool, f"{where}.route_optimized")
    for key in ("latency", "stream_interval"):
        if key in mapping:
            kwargs[key] = _number(mapping[key], f"{where}.{key}")
    for key in ("served_models", "allowed_clients"):
        if key in mapping and mapping[key] is not None:
            values = _sequence(mapping[key], f"{where}.{key}")
            kwargs[key] = tuple(_text(v, f"{where}.{key}") for v in values)
    return EndpointSpec(**kwargs)


def _policy(item: object, index: int) -> FederationPolicy:
    where = f"federation[{index}]"
    mapping = _mapping(item, where)
    unknown = sorted(set(mapping) - _POLICY_KEYS)
    if unknown:
        raise SettingsError(f"{where}: unknown key {unknown[0]!r}")
    kwargs: dict[str, Any] = {
        key: None if value is None else _text(value, f"{where}.{key}") for key, value in mapping.items()
    }
    for key in ("issuer", "subject"):
        if kwargs.get(key, "") is None:
            raise SettingsError(f"{where}.{key} must be a string")
    return FederationPolicy(**kwargs)


def _faults(value: object) -> Faults:
    faults = Faults()
    try:
        apply_patch(faults, _mapping(value, "faults"))
    except FaultsError as exc:
        raise SettingsError(f"faults: {exc}") from exc
    return faults
