"""Settings: flags, `SERVING_SIDECAR_*` environment, a YAML file and `~/.databrickscfg`, validated once.

This is the only module that reads `os.environ`. Precedence for every option: command-line flag, then
the environment variable, then the `--config` YAML file, then the default. Workspace credentials use the
Databricks unified-auth names (`DATABRICKS_HOST`, `DATABRICKS_CLIENT_ID`, `DATABRICKS_CLIENT_SECRET`,
`DATABRICKS_CONFIG_PROFILE`).

Rules:
1. Every error is a `ConfigError` naming the option (the flag, variable or file key it came from) and
   never quoting a secret or a file's contents: it is printed as one line and the exit code is 2.
2. Numbers are what they say: an integer option takes integers only (`1.9` and `true` are errors, not 1);
   a float option takes finite numbers from zero to MAX_NUMBER (`nan`, `inf` and `-1` are errors).
3. The workspace URL is `https://`. Plain `http://` is accepted only for a loopback host and only with
   `--allow-insecure-loopback-host` (local experiments): the client secret travels in every token request.
4. Files are checked once here, so a bad one is a configuration error at start, not a traceback later:
   the CA bundle must be PEM certificates, the secret and token files readable UTF-8 text.
5. The egress proxy comes from the standard `https_proxy`/`HTTPS_PROXY` and `no_proxy`/`NO_PROXY`
   variables (lower case first) unless `--egress-proxy off`. Only `http://` proxy URLs are accepted, and
   errors about one never quote it: it may hold a password.
"""

from __future__ import annotations

import base64
import configparser
import grp
import ipaddress
import math
import os
import re
import ssl
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from proxy import routing
from proxy.cpus import usable_cpus
from proxy.errors import ConfigError

MAX_BODY_BYTES = 16 * 1024 * 1024
UNIX_PREFIX = "unix:"
MAX_SOCKET_PATH = 107  # bytes of sun_path on Linux, without the terminating NUL
ENV_PREFIX = "SERVING_SIDECAR_"
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")
# Standard proxy variables, lower case first (as curl and Python's urllib read them); the first set one wins.
PROXY_VARIABLES = ("https_proxy", "HTTPS_PROXY")
NO_PROXY_VARIABLES = ("no_proxy", "NO_PROXY")
MAX_NUMBER = 30 * 24 * 3600.0  # the largest value of a numeric option (30 days in seconds): timers overflow past it
_SHOWN = 80  # characters of a bad value quoted in an error
MAX_WORKERS = 64


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


@dataclass(frozen=True)
class EgressProxy:
    """The HTTP proxy that HTTPS upstream calls tunnel through (CONNECT), and the NO_PROXY entries that
    bypass it. `authorization` is the `Proxy-Authorization` value made from the proxy URL's user and
    password: it is left out of repr and str and never logged."""

    host: str
    port: int
    authorization: str | None = field(default=None, repr=False)
    no_proxy: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"http://{Address(self.host, self.port)}"


@dataclass(frozen=True)
class UnixAddress:
    """A Unix domain socket path, `unix:/run/serving-sidecar/http.sock`: local by nature, and file
    permissions (`--socket-mode`, `--socket-group`) decide who may connect."""

    path: Path

    def __str__(self) -> str:
        return f"{UNIX_PREFIX}{self.path}"

    @property
    def is_loopback(self) -> bool:
        return True


ListenAddress = Address | UnixAddress


@dataclass(frozen=True)
class Option:
    """One setting: its flag `--name`, env var `SERVING_SIDECAR_NAME`, YAML key `name` (dashes as underscores)."""

    name: str
    kind: Literal["str", "int", "float", "bool", "list", "choice", "mode"]
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    env: str = ""  # overrides the SERVING_SIDECAR_ name (Databricks unified-auth variables)

    @property
    def key(self) -> str:
        return self.name.replace("-", "_")

    @property
    def env_name(self) -> str:
        return self.env or ENV_PREFIX + self.key.upper()


OPTIONS: tuple[Option, ...] = (
    Option("host", "str", None, "Databricks workspace URL (https://)", env="DATABRICKS_HOST"),
    Option(
        "allow-insecure-loopback-host",
        "bool",
        False,
        "for local experiments only: accept an http:// workspace URL on a loopback host "
        "(the client secret and tokens then travel unencrypted); logs a warning",
    ),
    Option("client-id", "str", None, "service principal application id (OAuth M2M)", env="DATABRICKS_CLIENT_ID"),
    Option(
        "client-secret-file",
        "str",
        None,
        "file holding the client secret, re-read when it changes (Kubernetes Secret mount)",
    ),
    Option("profile", "str", None, "profile of ~/.databrickscfg to read", env="DATABRICKS_CONFIG_PROFILE"),
    Option(
        "auth",
        "choice",
        "oauth-m2m",
        "how to obtain the workspace token",
        choices=("oauth-m2m", "workload-identity"),
    ),
    Option("token-file", "str", None, "workload identity: projected service-account token file"),
    Option("token-audience", "str", None, "workload identity: audience of that token (default: token URL)"),
    Option("http-listen", "str", "127.0.0.1:8484", "HTTP listener for local callers: HOST:PORT or unix:/PATH"),
    Option("grpc-listen", "str", "127.0.0.1:8485", "gRPC listener for local callers: HOST:PORT or unix:/PATH"),
    Option(
        "socket-mode",
        "mode",
        "0660",
        "permission bits (octal) of unix: listener sockets; a caller needs write permission to connect",
    ),
    Option("socket-group", "str", None, "group (name or id) that owns unix: listener sockets"),
    Option("admin-listen", "str", "127.0.0.1:8486", "admin listener: /healthz /readyz /startupz /metrics"),
    Option(
        "allow-remote-clients",
        "bool",
        False,
        "allow non-loopback HTTP/gRPC listen addresses (anyone reaching the port spends the SP's rights)",
    ),
    Option(
        "egress-proxy",
        "choice",
        "auto",
        "auto: HTTPS upstream calls tunnel through HTTPS_PROXY (CONNECT) unless NO_PROXY lists the host; "
        "off: always connect directly",
        choices=("auto", "off"),
    ),
    Option("ca-bundle", "str", None, "PEM file of extra CAs trusted for the workspace and data plane"),
    Option("endpoint", "list", (), "endpoint resolved and warmed at start (repeatable)"),
    Option(
        "only-configured-endpoints",
        "bool",
        False,
        "answer 404 for every endpoint name not given with --endpoint, without a workspace lookup "
        "(the hardened setting for shared hosts)",
    ),
    Option("pool-size", "int", 256, "max connections per upstream host"),
    Option("warm-connections", "int", 2, "connections opened per upstream host when an endpoint resolves"),
    Option("connect-timeout", "float", 10.0, "seconds for TCP + TLS handshake to an upstream"),
    Option("first-byte-timeout", "float", 300.0, "seconds to wait for the upstream's response headers"),
    Option("stream-idle-timeout", "float", 300.0, "seconds allowed between two chunks of a streamed answer"),
    Option("idle-connection-timeout", "float", 30.0, "close pooled connections idle this long (seconds)"),
    Option("metadata-ttl", "float", 300.0, "seconds an endpoint resolution is cached"),
    Option("retry-attempts", "int", 5, "most sends of one request on 429/503/connect failures (first included)"),
    Option("retry-budget", "float", 10.0, "most seconds one request spends waiting between retries"),
    Option(
        "retry-ratio",
        "float",
        0.2,
        "retry budget shared by all requests: retries may add at most this fraction to the requests of the last 10 s",
    ),
    Option(
        "min-retries-per-second",
        "float",
        5.0,
        "retry budget floor: this many retries a second are allowed whatever --retry-ratio says (low traffic)",
    ),
    Option(
        "idempotent-endpoint",
        "list",
        (),
        "endpoint whose 500/502/504 and timeouts may be retried (its inference may run twice; repeatable)",
    ),
    Option("max-in-flight", "int", 1024, "requests in flight beyond which new ones get an immediate 503"),
    Option("max-in-flight-per-endpoint", "int", 512, "the same bound for each endpoint"),
    Option(
        "drain-delay",
        "float",
        5.0,
        "on SIGTERM/SIGINT: seconds readiness is 503 while requests are still accepted (load balancers catch up)",
    ),
    Option("drain-timeout", "float", 30.0, "then: seconds in-flight requests (streams too) get to finish"),
    Option("header-timeout", "float", 10.0, "seconds a caller has to send a request's line and headers"),
    Option("body-timeout", "float", 30.0, "seconds a caller's request body may stay idle between two reads"),
    Option(
        "write-timeout",
        "float",
        60.0,
        "seconds a write to a caller that stopped reading may stay blocked; then its connection is closed",
    ),
    Option(
        "keepalive-timeout",
        "float",
        75.0,
        "seconds an idle caller connection is kept open (above common load-balancer idle timeouts of 60 s)",
    ),
    Option("max-connections", "int", 4096, "caller connections beyond this are closed at once"),
    Option(
        "max-buffered-request-bytes",
        "int",
        128 * 1024 * 1024,
        "request-body bytes buffered across connections while bodies arrive; beyond it a request gets 503",
    ),
    Option("max-header-bytes", "int", 64 * 1024, "bytes of request line and headers beyond which a request gets 431"),
    Option("max-headers", "int", 100, "request headers beyond which a request gets 431"),
    Option(
        "event-loop",
        "choice",
        "uvloop",
        "asyncio event loop implementation (uvloop is faster; asyncio is the standard library's)",
        choices=("uvloop", "asyncio"),
    ),
    Option(
        "workers",
        "str",
        "1",
        "processes serving the HTTP front: a number, or auto (the CPUs the affinity mask and cgroup quota "
        "allow); 1 runs no extra process",
    ),
    Option("log-format", "choice", "text", "log line format", choices=LOG_FORMATS),
    Option("log-level", "choice", "info", "least severe level logged", choices=LOG_LEVELS),
    Option("access-log", "bool", False, "log one line per request (off by default: it costs throughput)"),
)

_BY_KEY = {opt.key: opt for opt in OPTIONS}


@dataclass(frozen=True)
class Settings:
    host: str
    client_id: str
    client_secret: str | None
    client_secret_file: Path | None
    auth: str
    token_file: Path | None
    token_audience: str | None
    http_listen: ListenAddress
    grpc_listen: ListenAddress
    admin_listen: Address
    allow_remote_clients: bool
    ca_bundle: Path | None
    endpoints: tuple[str, ...]
    pool_size: int
    warm_connections: int
    connect_timeout: float
    first_byte_timeout: float
    stream_idle_timeout: float
    idle_connection_timeout: float
    metadata_ttl: float
    retry_attempts: int = 5
    retry_budget: float = 10.0
    retry_ratio: float = 0.2
    min_retries_per_second: float = 5.0
    only_configured_endpoints: bool = False
    idempotent_endpoints: tuple[str, ...] = ()
    max_in_flight: int = 1024
    max_in_flight_per_endpoint: int = 512
    drain_delay: float = 5.0
    drain_timeout: float = 30.0
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    write_timeout: float = 60.0
    keepalive_timeout: float = 75.0
    max_connections: int = 4096
    max_buffered_request_bytes: int = 128 * 1024 * 1024
    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
    event_loop: str = "uvloop"
    workers: int = 1
    log_format: str = "text"
    log_level: str = "info"
    access_log: bool = False
    allow_insecure_loopback_host: bool = False
    egress_proxy: EgressProxy | None = None  # from HTTPS_PROXY and NO_PROXY unless --egress-proxy off
    socket_mode: int = 0o660
    socket_group: int | None = None  # gid; None keeps the process's group

    def __repr__(self) -> str:
        secret = "set" if self.client_secret else "unset"
        return f"Settings(host={self.host!r}, client_id={self.client_id!r}, client_secret=<{secret}>)"

    @property
    def token_url(self) -> str:
        return self.host + "/oidc/v1/token"

    @property
    def insecure_host(self) -> bool:
        """True when the workspace is reached over plain HTTP (allowed on loopback for experiments only)."""
        return self.host.startswith("http://")


def load(
    flags: Mapping[str, Any],
    *,
    environ: Mapping[str, str] | None = None,
    home: Path | None = None,
) -> Settings:
    """Merge flags (None = not given), environment, YAML file and defaults into validated Settings."""
    env = os.environ if environ is None else environ
    config_path = flags.get("config") or env.get(ENV_PREFIX + "CONFIG")
    file_values = _read_yaml(Path(config_path)) if config_path else {}
    raw = {opt.key: _pick(opt, flags, env, file_values) for opt in OPTIONS}
    profile = _read_profile(raw["profile"], home or Path.home())
    return _validate(raw, env, profile)


def load_admin_address(flags: Mapping[str, Any], *, environ: Mapping[str, str] | None = None) -> Address:
    """Only the admin listen address, from the same sources and precedence as `load`. For `serving-sidecar
    wait`, which runs where the sidecar's credentials may not be mounted, so nothing else is validated."""
    env = os.environ if environ is None else environ
    config_path = flags.get("config") or env.get(ENV_PREFIX + "CONFIG")
    file_values = _read_yaml(Path(config_path)) if config_path else {}
    return _address(_pick(_BY_KEY["admin_listen"], flags, env, file_values), "admin_listen")


def parse_address(value: str, key: str) -> Address:
    """HOST:PORT (IPv6 in brackets) as an Address; ConfigError naming `key` otherwise."""
    return _address(value, key)


def _pick(opt: Option, flags: Mapping[str, Any], env: Mapping[str, str], file_values: Mapping[str, Any]) -> Any:
    flag = flags.get(opt.key)
    if flag is not None and flag != [] and flag is not False:
        return _parse(opt, flag, f"--{opt.name}")
    if opt.env_name in env:
        return _parse(opt, env[opt.env_name], opt.env_name)
    if opt.key in file_values:
        return _parse(opt, file_values[opt.key], f"{opt.key} (config file)")
    return opt.default


_EXPECTED = {
    "str": "a string",
    "choice": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "list": "a list of names",
    "mode": "an octal mode such as 0660",
}


def _parse(opt: Option, value: Any, where: str) -> Any:
    """`value` as the option's kind (rule 2), or ConfigError naming `where` (a flag, variable or file key)."""
    parsers: dict[str, Callable[[Any], Any]] = {
        "str": _parse_str,
        "choice": _parse_str,
        "int": _parse_int,
        "float": _parse_float,
        "bool": _parse_bool,
        "list": _parse_list,
        "mode": _parse_mode,
    }
    if opt.kind == "choice" and isinstance(value, bool):  # YAML reads an unquoted off/on as a boolean
        value = "on" if value else "off"
    try:
        parsed = parsers[opt.kind](value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ConfigError(f"{where}: expected {_EXPECTED[opt.kind]}, got {_shown(value)}") from exc
    if opt.choices and parsed not in opt.choices:
        raise ConfigError(f"{where}: must be one of {', '.join(opt.choices)}, got {_shown(parsed)}")
    if opt.kind in ("int", "float"):
        _check_range(parsed, where, upper=MAX_NUMBER if opt.kind == "float" else None)
    return parsed


def _check_range(value: float, where: str, *, upper: float | None) -> None:
    if not math.isfinite(value):
        raise ConfigError(f"{where}: must be a finite number, got {value}")
    if value < 0:
        raise ConfigError(f"{where}: must be zero or more, got {value}")
    if upper is not None and value > upper:
        raise ConfigError(f"{where}: must be at most {upper:.0f}, got {value:g}")


def _shown(value: Any) -> str:
    """A bad value as quoted in an error: its repr, cut short (a value can be a whole file)."""
    text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def _parse_str(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise TypeError(value)
    return str(value)


def _parse_int(value: Any) -> int:
    """Integers only: `1.9`, `2.0` and `true` are refused rather than truncated or read as 1."""
    if isinstance(value, bool | float):
        raise ValueError(value)
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        return int(value.strip())
    raise TypeError(value)


def _parse_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        return float(value.strip())
    raise TypeError(value)


def _parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(value)


def _parse_list(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(item.strip() for item in value.split(",") if item.strip())
    if isinstance(value, list | tuple):
        return tuple(_parse_str(item) for item in value)
    raise ValueError(value)


def _parse_mode(value: Any) -> int:
    """Permission bits: an octal string ("0660", "660", "0o660"), or a YAML number (YAML reads 0660 as octal)."""
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, int):
        mode = value
    else:
        text = str(value).strip().lower().removeprefix("0o")
        if not re.fullmatch(r"[0-7]{1,4}", text):
            raise ValueError(value)
        mode = int(text, 8)
    if not 0 <= mode <= 0o777:
        raise ValueError(value)
    return mode


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml  # only with a config file: not loaded otherwise (memory)

    text = _read_text(path, "config")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        # Only the problem and its position: the usual message quotes the file's lines, which may hold a secret.
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(f"config: {path} is not valid YAML: {problem}{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config: {path} must hold a mapping of option: value")
    values = {str(k).replace("-", "_"): v for k, v in data.items()}
    for plural, singular in (("endpoints", "endpoint"), ("idempotent_endpoints", "idempotent_endpoint")):
        if plural in values:
            values[singular] = values.pop(plural)
    unknown = sorted(set(values) - set(_BY_KEY) - {"client_secret"})
    if unknown:
        raise ConfigError(f"config: unknown key(s) {', '.join(unknown)} in {path}")
    if "client_secret" in values:
        raise ConfigError(
            f"config: client_secret in {path}: put the secret in a file (client_secret_file) "
            "or in DATABRICKS_CLIENT_SECRET, never in the config file"
        )
    return values


def _read_profile(name: str | None, home: Path) -> Mapping[str, str]:
    if not name:
        return {}
    path = home / ".databrickscfg"
    parser = configparser.ConfigParser(interpolation=None)
    text = _read_text(path, "profile")
    try:
        parser.read_string(text)
    except configparser.Error as exc:
        # Not exc.message: it quotes the offending line, and a profile holds a client secret.
        line = getattr(exc, "lineno", None)
        where = f" (line {line})" if line else ""
        raise ConfigError(f"profile: {path} is malformed: {type(exc).__name__}{where}") from None
    if name not in parser:
        raise ConfigError(f"profile: no profile [{name}] in {path}")
    return dict(parser[name])


def _read_text(path: Path, key: str) -> str:
    """A file's text, or ConfigError naming `key` (never quoting the contents)."""
    try:
        return path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{key}: {path} is not UTF-8 text") from None


def _validate(raw: dict[str, Any], env: Mapping[str, str], profile: Mapping[str, str]) -> Settings:
    insecure_ok = raw["allow_insecure_loopback_host"]
    host = _normalize_host(raw["host"] or profile.get("host"), allow_insecure_loopback=insecure_ok)
    client_id = _client_id(raw, env, profile)
    secret = env.get("DATABRICKS_CLIENT_SECRET") or profile.get("client_secret")
    secret_file = _text_file(raw["client_secret_file"], "client-secret-file")
    token_file = _text_file(raw["token_file"], "token-file")
    auth = raw["auth"]
    if auth == "oauth-m2m" and not (secret or secret_file):
        raise ConfigError("client secret: set DATABRICKS_CLIENT_SECRET or --client-secret-file for --auth oauth-m2m")
    if auth == "workload-identity" and token_file is None:
        raise ConfigError("token-file: --auth workload-identity needs the projected service-account token file")
    if raw["only_configured_endpoints"] and not raw["endpoint"]:
        raise ConfigError("only-configured-endpoints: name the endpoints to serve with --endpoint")
    listens = _listen_addresses(raw)
    return Settings(
        host=host,
        client_id=client_id,
        client_secret=secret,
        client_secret_file=secret_file,
        auth=auth,
        token_file=token_file,
        token_audience=raw["token_audience"],
        http_listen=listens["http_listen"],
        grpc_listen=listens["grpc_listen"],
        admin_listen=listens["admin_listen"],
        allow_remote_clients=raw["allow_remote_clients"],
        ca_bundle=_ca_bundle(raw["ca_bundle"]),
        endpoints=_names(raw["endpoint"], "endpoint"),
        pool_size=_positive(raw["pool_size"], "pool-size"),
        warm_connections=raw["warm_connections"],
        connect_timeout=_positive(raw["connect_timeout"], "connect-timeout"),
        first_byte_timeout=_positive(raw["first_byte_timeout"], "first-byte-timeout"),
        stream_idle_timeout=_positive(raw["stream_idle_timeout"], "stream-idle-timeout"),
        idle_connection_timeout=_positive(raw["idle_connection_timeout"], "idle-connection-timeout"),
        metadata_ttl=_positive(raw["metadata_ttl"], "metadata-ttl"),
        retry_attempts=_positive(raw["retry_attempts"], "retry-attempts"),
        retry_budget=raw["retry_budget"],
        retry_ratio=raw["retry_ratio"],
        min_retries_per_second=raw["min_retries_per_second"],
        only_configured_endpoints=raw["only_configured_endpoints"],
        idempotent_endpoints=_names(raw["idempotent_endpoint"], "idempotent-endpoint"),
        max_in_flight=_positive(raw["max_in_flight"], "max-in-flight"),
        max_in_flight_per_endpoint=_positive(raw["max_in_flight_per_endpoint"], "max-in-flight-per-endpoint"),
        drain_delay=raw["drain_delay"],
        drain_timeout=raw["drain_timeout"],
        header_timeout=_positive(raw["header_timeout"], "header-timeout"),
        body_timeout=_positive(raw["body_timeout"], "body-timeout"),
        write_timeout=_positive(raw["write_timeout"], "write-timeout"),
        keepalive_timeout=_positive(raw["keepalive_timeout"], "keepalive-timeout"),
        max_connections=_positive(raw["max_connections"], "max-connections"),
        max_buffered_request_bytes=_positive(raw["max_buffered_request_bytes"], "max-buffered-request-bytes"),
        max_header_bytes=_positive(raw["max_header_bytes"], "max-header-bytes"),
        max_headers=_positive(raw["max_headers"], "max-headers"),
        event_loop=raw["event_loop"],
        workers=_workers(raw["workers"]),
        log_format=raw["log_format"],
        log_level=raw["log_level"],
        access_log=raw["access_log"],
        allow_insecure_loopback_host=insecure_ok,
        egress_proxy=_egress_proxy(raw["egress_proxy"], env),
        socket_mode=_socket_mode(raw["socket_mode"]),
        socket_group=_socket_group(raw["socket_group"]),
    )


def _workers(value: Any) -> int:
    """`--workers`: `auto` (usable CPUs, see proxy.cpus) or a whole number from 1 to MAX_WORKERS."""
    text = str(value).strip().lower()
    if text == "auto":
        count = min(MAX_WORKERS, usable_cpus()) if sys.platform == "linux" else 1
    elif text.isdigit() and 1 <= int(text) <= MAX_WORKERS:
        count = int(text)
    else:
        raise ConfigError(f"workers: expected auto or a whole number from 1 to {MAX_WORKERS}, got {value!r}")
    if count > 1 and sys.platform != "linux":
        raise ConfigError(f"workers: more than one worker needs Linux (this is {sys.platform}); use 1")
    return count


def _egress_proxy(mode: str, env: Mapping[str, str]) -> EgressProxy | None:
    """The proxy from the standard environment variables, or None (`--egress-proxy off`, or none set)."""
    if mode == "off":
        return None
    found = [(name, env[name]) for name in PROXY_VARIABLES if env.get(name, "").strip()]
    if not found:
        return None
    no_proxy = next((env[name] for name in NO_PROXY_VARIABLES if env.get(name, "").strip()), "")
    return parse_proxy_url(found[0][1], found[0][0], no_proxy=_parse_list(no_proxy))


def parse_proxy_url(value: str, where: str, *, no_proxy: tuple[str, ...] = ()) -> EgressProxy:
    """`[http://][user:password@]host[:port]` (port 80 by default) as an EgressProxy. The ConfigError names
    `where` but never repeats the value, which may hold a password."""
    text = value.strip() if "://" in value else "http://" + value.strip()
    try:
        parts = urlsplit(text)
        host, port = parts.hostname, parts.port
    except ValueError:
        raise ConfigError(f"{where}: the proxy URL is malformed (expected http://HOST:PORT)") from None
    scheme = parts.scheme.lower()
    if scheme == "https":
        raise ConfigError(
            f"{where}: an https:// proxy (TLS to the proxy itself) is not supported; give it as http://HOST:PORT "
            "(calls inside the tunnel are TLS to the upstream either way), or pass --egress-proxy off"
        )
    if scheme != "http" or not host:
        raise ConfigError(f"{where}: expected an http://HOST:PORT proxy URL, or pass --egress-proxy off")
    return EgressProxy(host, port or 80, _basic_credentials(parts.username, parts.password), no_proxy)


def _basic_credentials(user: str | None, password: str | None) -> str | None:
    if user is None:
        return None
    pair = f"{unquote(user)}:{unquote(password or '')}".encode()
    return "Basic " + base64.b64encode(pair).decode("ascii")


def _client_id(raw: Mapping[str, Any], env: Mapping[str, str], profile: Mapping[str, str]) -> str:
    client_id = raw["client_id"] or profile.get("client_id")
    if client_id:
        return str(client_id)
    if env.get("DATABRICKS_TOKEN") or profile.get("token"):
        raise ConfigError(
            "a personal access token (DATABRICKS_TOKEN) cannot be used: route-optimized serving "
            "endpoints accept Databricks OAuth tokens only. Configure a service principal with "
            "DATABRICKS_CLIENT_ID and DATABRICKS_CLIENT_SECRET (or --client-secret-file)."
        )
    raise ConfigError("client-id: set DATABRICKS_CLIENT_ID (the service principal's application id)")


def _listen_addresses(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The three listen addresses; HTTP and gRPC must be loopback (or Unix sockets) unless remote clients
    are allowed. The admin listener is TCP only: kubelet probes and Prometheus scrapes need a port."""
    listens: dict[str, Any] = {key: _listen_address(raw[key], key) for key in ("http_listen", "grpc_listen")}
    if str(raw["admin_listen"]).startswith(UNIX_PREFIX):
        raise ConfigError(
            "admin-listen: needs HOST:PORT; kubelet probes and Prometheus scrapes cannot use a Unix socket"
        )
    listens["admin_listen"] = _address(raw["admin_listen"], "admin_listen")
    if listens["http_listen"] == listens["grpc_listen"] and isinstance(listens["http_listen"], UnixAddress):
        raise ConfigError(f"grpc-listen: {listens['grpc_listen']} is also the HTTP listener's socket")
    if not raw["allow_remote_clients"]:
        for key in ("http_listen", "grpc_listen"):
            if not listens[key].is_loopback:
                raise ConfigError(
                    f"{key.replace('_', '-')}: {listens[key]} is not a loopback address; anyone who can "
                    "reach it spends the service principal's rights. Pass --allow-remote-clients to accept."
                )
    return listens


def _normalize_host(value: str | None, *, allow_insecure_loopback: bool = False) -> str:
    if not value:
        raise ConfigError("host: set DATABRICKS_HOST (the workspace URL, e.g. https://my.cloud.databricks.com)")
    text = value if "://" in value else "https://" + value
    parts = urlsplit(text)
    if parts.scheme.lower() not in {"https", "http"} or not parts.hostname:
        raise ConfigError(f"host: {_shown(value)} is not a workspace URL")
    try:
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"host: {_shown(value)} has an invalid port") from exc
    if parts.scheme.lower() == "http":
        _check_insecure_host(parts.hostname, allow_insecure_loopback)
    netloc = parts.hostname if port is None else f"{parts.hostname}:{port}"
    if ":" in parts.hostname:
        netloc = f"[{parts.hostname}]" + ("" if port is None else f":{port}")
    return f"{parts.scheme.lower()}://{netloc}"


def _check_insecure_host(hostname: str, allowed: bool) -> None:
    """Rule 3: plain HTTP would send `Basic base64(client_id:secret)` and every bearer token in clear text."""
    if not allowed:
        raise ConfigError(
            "host: the workspace URL must be https:// (over plain http:// the client secret and tokens travel "
            "in clear text); --allow-insecure-loopback-host accepts http:// on a loopback host, for local "
            "experiments only"
        )
    if not Address(hostname, 0).is_loopback:
        raise ConfigError(
            f"host: --allow-insecure-loopback-host accepts http:// only for a loopback host, not {hostname!r}; "
            "use https://"
        )


def _listen_address(value: str, key: str) -> ListenAddress:
    text = str(value)
    if not text.startswith(UNIX_PREFIX):
        return _address(text, key)
    # unix:/abs/path, or grpc's unix:///abs/path spelling
    path = "/" + text.removeprefix(UNIX_PREFIX).lstrip("/") if text.startswith(UNIX_PREFIX + "/") else ""
    flag = key.replace("_", "-")
    if not path or path == "/":
        raise ConfigError(f"{flag}: expected unix:/ABSOLUTE/PATH, got {value!r}")
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise ConfigError(f"{flag}: socket path {path} is longer than {MAX_SOCKET_PATH} bytes")
    return UnixAddress(Path(path))


def _socket_mode(value: Any) -> int:
    try:
        return _parse_mode(value)
    except ValueError:
        raise ConfigError(f"socket-mode: expected an octal mode such as 0660, got {value!r}") from None


def _socket_group(value: str | None) -> int | None:
    if value is None or str(value) == "":
        return None
    text = str(value)
    if text.isdigit():
        return int(text)
    try:
        return grp.getgrnam(text).gr_gid
    except KeyError:
        raise ConfigError(f"socket-group: no group named {text!r} on this machine") from None


def _address(value: str, key: str) -> Address:
    host, sep, port = str(value).rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ConfigError(f"{key.replace('_', '-')}: expected HOST:PORT, got {value!r}")
    if not 0 <= int(port) <= 65535:
        raise ConfigError(f"{key.replace('_', '-')}: port out of range in {value!r}")
    return Address(host.strip("[]"), int(port))


def _existing_file(value: str | None, key: str) -> Path | None:
    if not value:
        return None
    path = Path(value)
    if not path.is_file():
        raise ConfigError(f"{key}: {path} does not exist or is not a file")
    return path


def _text_file(value: str | None, key: str) -> Path | None:
    """A file that is read again later (secret, token): readable, UTF-8, not empty now. Its text is not kept."""
    path = _existing_file(value, key)
    if path is not None and not _read_text(path, key).strip():
        raise ConfigError(f"{key}: {path} is empty")
    return path


def _ca_bundle(value: str | None) -> Path | None:
    path = _existing_file(value, "ca-bundle")
    if path is None:
        return None
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=str(path))
    except OSError as exc:  # ssl.SSLError included
        reason = exc.strerror if not isinstance(exc, ssl.SSLError) else "not a PEM file of CA certificates"
        raise ConfigError(f"ca-bundle: {path}: {reason or 'cannot be read'}") from None
    return path


def _names(values: tuple[str, ...], key: str) -> tuple[str, ...]:
    """Endpoint names as the routes accept them: anything else could steer a workspace lookup elsewhere."""
    for name in values:
        if not routing.is_valid_name(name):
            raise ConfigError(
                f"{key}: {_shown(name)} is not an endpoint name (letters, digits, - and _, at most 64 characters)"
            )
    return tuple(values)


def _positive(value: Any, key: str) -> Any:
    if value <= 0:
        raise ConfigError(f"{key}: must be greater than zero, got {value}")
    return value
