"""``serving-sidecar emulator``: run the emulated workspace until SIGINT/SIGTERM.

Prints ``key: value`` lines (stable, for scripts): ``workspace_url``, ``ca_file``, ``client_id``,
``client_secret``, ``admin``, then one ``endpoint <name>: <url>`` line per endpoint, then ``ready``.
Exit codes: 0 after a signal, 2 for a bad config or flag, 1 when a port cannot be bound.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import signal
import sys
import tempfile
from pathlib import Path
from typing import TextIO

from proxy.emulator.server import Emulator
from proxy.emulator.settings import (
    DEFAULT_CLIENT_SECRET,
    EmulatorSettings,
    SettingsError,
    load_settings,
)

DEFAULT_TLS_PORT = 8443
DEFAULT_PLAIN_PORT = 8080


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="YAML file: workspace_id, clients, endpoints, ttls, federation")
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument(
        "--control-port",
        type=int,
        help=f"workspace port; default {DEFAULT_TLS_PORT}, or {DEFAULT_PLAIN_PORT} with --plain-http",
    )
    parser.add_argument(
        "--data-port",
        type=int,
        help="first data-plane port (one per route-optimized endpoint); default ephemeral",
    )
    parser.add_argument("--plain-http", action="store_true", help="serve plain HTTP instead of HTTPS")
    parser.add_argument("--ca-out", type=Path, help="write the CA certificate (PEM) to this file")
    parser.add_argument("--client-id", help="service principal id (replaces the configured clients)")
    parser.add_argument("--client-secret", help="its secret")
    parser.add_argument("--cp-token-ttl", type=float, help="workspace token lifetime, seconds")
    parser.add_argument("--dp-token-ttl", type=float, help="data-plane token lifetime, seconds")
    parser.add_argument(
        "--latency",
        action="append",
        default=[],
        metavar="NAME=SECONDS",
        help="added latency for one endpoint (repeatable)",
    )


def build_settings(args: argparse.Namespace) -> EmulatorSettings:
    """Config file first, then flags on top. Raises ``SettingsError``."""
    settings = load_settings(args.config) if args.config else EmulatorSettings()
    changes: dict[str, object] = {}
    if args.host:
        changes["host"] = args.host
    if args.plain_http:
        changes["tls"] = False
    tls = bool(changes.get("tls", settings.tls))
    if args.control_port is not None:
        changes["control_port"] = args.control_port
    elif not args.config or settings.control_port == 0:
        changes["control_port"] = DEFAULT_TLS_PORT if tls else DEFAULT_PLAIN_PORT
    if args.data_port is not None:
        changes["data_port"] = args.data_port
    if args.client_id or args.client_secret:
        client_id = args.client_id or settings.default_client_id
        changes["clients"] = {client_id: args.client_secret or DEFAULT_CLIENT_SECRET}
    if args.cp_token_ttl is not None:
        changes["cp_token_ttl"] = args.cp_token_ttl
    if args.dp_token_ttl is not None:
        changes["dp_token_ttl"] = args.dp_token_ttl
    settings = dataclasses.replace(settings, **changes)  # type: ignore[arg-type]
    settings.faults.latency.update(_latencies(args.latency, {s.name for s in settings.endpoints}))
    return settings


def _latencies(values: list[str], names: set[str]) -> dict[str, float]:
    latencies: dict[str, float] = {}
    for value in values:
        name, sep, seconds = value.partition("=")
        if not sep or name not in names:
            raise SettingsError(f"--latency {value!r}: expected NAME=SECONDS with a configured endpoint name")
        try:
            latencies[name] = float(seconds)
        except ValueError:
            raise SettingsError(f"--latency {value!r}: SECONDS must be a number") from None
        if not 0 <= latencies[name] < float("inf"):
            raise SettingsError(f"--latency {value!r}: SECONDS must be >= 0")
    return latencies


def run(args: argparse.Namespace) -> int:
    """Entry point for ``serving-sidecar emulator``."""
    try:
        settings = build_settings(args)
    except SettingsError as err:
        print(f"serving-sidecar emulator: error: {err}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(settings, ca_out=args.ca_out))
    except OSError as err:
        print(f"serving-sidecar emulator: error: cannot listen: {err}", file=sys.stderr)
        return 1
    return 0


async def serve(settings: EmulatorSettings, *, ca_out: Path | None, out: TextIO = sys.stdout) -> None:
    """Run until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    with tempfile.TemporaryDirectory(prefix="serving-emulator-") as scratch:
        async with Emulator(settings) as emu:
            ca_file = None
            if settings.tls:
                ca_file = emu.write_ca(ca_out or Path(scratch) / "ca.pem")
            describe(emu, ca_file, out)
            await stop.wait()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(Exception):
            loop.remove_signal_handler(signum)


def describe(emu: Emulator, ca_file: Path | None, out: TextIO) -> None:
    """Print the stable ``key: value`` lines of the module docstring."""
    lines = [
        f"workspace_url: {emu.workspace_url}",
        f"ca_file: {ca_file if ca_file else 'none (plain http)'}",
        f"client_id: {emu.client_id}",
        f"client_secret: {emu.client_secret}",
        f"admin: {emu.workspace_url}/_emulator/counters",
    ]
    for endpoint in emu.endpoints():
        kind = f"{endpoint['kind']}, {'route-optimized' if endpoint['route_optimized'] else 'plain'}"
        lines.append(f"endpoint {endpoint['name']}: {endpoint['endpoint_url']} ({kind})")
    lines.append("ready")
    out.write("\n".join(lines) + "\n")
    out.flush()
