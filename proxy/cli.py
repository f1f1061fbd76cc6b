"""Command line: argv -> Settings, and the subcommands run | check | demo | emulator, with exit codes.

Exit codes: 0 success (including a graceful drain after SIGTERM/SIGINT), 1 a check failed (check),
2 bad configuration or usage, 128 + signal number when a second signal cut the drain short.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from proxy import __version__, config, logs
from proxy.app import Sidecar
from proxy.emulator import cli as emulator_cli
from proxy.errors import ConfigError, SidecarError

log = logging.getLogger("serving_sidecar")


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per config option; every flag is also a YAML key and a SERVING_SIDECAR_* variable."""
    parser.add_argument("--config", metavar="FILE", help="YAML file of options (keys as flags, with underscores)")
    for opt in config.OPTIONS:
        flag = f"--{opt.name}"
        help_text = f"{opt.help} [env {opt.env_name}; default {opt.default!r}]"
        if opt.kind == "bool":
            parser.add_argument(flag, action="store_true", default=None, help=help_text)
        elif opt.kind == "list":
            parser.add_argument(flag, action="append", metavar="NAME", help=help_text)
        elif opt.kind == "choice":
            parser.add_argument(flag, choices=opt.choices, help=help_text)
        else:
            kinds: dict[str, type] = {"int": int, "float": float, "str": str, "mode": str}
            parser.add_argument(flag, type=kinds[opt.kind], metavar=opt.key.upper(), help=help_text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="serving-sidecar",
        description="Local gateway to Databricks route-optimized model serving.",
    )
    parser.add_argument("--version", action="version", version=f"serving-sidecar {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    add_settings_arguments(sub.add_parser("run", help="serve local callers (the sidecar itself)"))
    add_settings_arguments(
        sub.add_parser("check", help="validate configuration, fetch tokens, resolve endpoints, print a table")
    )
    demo = sub.add_parser("demo", help="emulated workspace + sidecar in one process, for a first look")
    demo.add_argument("--http-listen", default="127.0.0.1:8484")
    demo.add_argument("--admin-listen", default="127.0.0.1:8486")
    demo.add_argument("--grpc-listen", default="127.0.0.1:8485")
    emulator_cli.add_arguments(
        sub.add_parser("emulator", help="run the emulated Databricks workspace (control + data plane)")
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "emulator":
        return emulator_cli.run(args)
    logs.configure()
    try:
        if args.command == "demo":
            return asyncio.run(_demo(args))
        settings = config.load(vars(args))
    except ConfigError as error:
        print(f"serving-sidecar: configuration error: {error}", file=sys.stderr)
        return 2
    logs.configure(fmt=settings.log_format, level=settings.log_level, secrets=_known_secrets(settings))
    if args.command == "check":
        return asyncio.run(_check(settings))
    return asyncio.run(_serve(Sidecar(settings)))


def _known_secrets(settings: config.Settings) -> list[str]:
    """Secret values to redact from logs by value (tokens are caught by shape)."""
    secrets = [settings.client_secret] if settings.client_secret else []
    if settings.client_secret_file is not None:
        with contextlib.suppress(OSError):  # an unreadable file is reported when a token is fetched
            secrets.append(settings.client_secret_file.read_text().strip())
    return secrets


SIGNALS = (signal.SIGTERM, signal.SIGINT)


async def _serve(sidecar: Sidecar, banner: str = "") -> int:
    """Serve until SIGTERM/SIGINT, then drain and return 0; a second signal exits at once."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():
            log.warning("second %s: exiting at once, requests in flight are cut", name)
            _exit_now(128 + signum)
        log.info("%s: draining (send it again to exit at once)", name)
        stop.set()

    for sig in SIGNALS:
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        await sidecar.start()
        if banner:
            print(banner, flush=True)
        await stop.wait()
        await sidecar.drain()
    finally:
        for sig in SIGNALS:
            loop.remove_signal_handler(sig)
    return 0


def _exit_now(code: int) -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    os._exit(code)


async def _check(settings: config.Settings) -> int:
    """Fetch the workspace token, resolve and mint a token for each listed endpoint; print a table."""
    sidecar = Sidecar(settings)
    rows: list[tuple[str, ...]] = []
    failed = False
    try:
        await sidecar.credentials.workspace.get()
        rows.append(("(workspace)", "-", _host(settings.host), _expiry(sidecar.credentials.workspace.expires_at)))
        for name in settings.endpoints:
            try:
                resolution = await sidecar.resolver.resolve(name)
                source = sidecar.credentials.for_target(resolution.url, resolution.authorization_details, label=name)
                await source.get()
                kind = "route-optimized" if resolution.route_optimized else "plain"
                if resolution.ready != "READY":
                    failed = True
                    kind += f" (state {resolution.ready or 'unknown'}, not READY)"
                rows.append((name, kind, _host(resolution.url), _expiry(source.expires_at)))
            except SidecarError as error:
                failed = True
                rows.append((name, "FAILED", "-", error.message))
    except SidecarError as error:
        print(f"serving-sidecar check: FAILED: {error.message}", file=sys.stderr)
        return 1
    finally:
        await sidecar.stop()
    _print_table(("endpoint", "kind", "upstream host", "token expiry"), rows)
    if not settings.endpoints:
        print("note: no --endpoint listed; only the workspace credential was checked")
    return 1 if failed else 0


def _host(url: str) -> str:
    return url.split("://", 1)[-1].split("/", 1)[0]


def _expiry(expires_at: float | None) -> str:
    if expires_at is None:
        return "-"
    when = datetime.fromtimestamp(expires_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    seconds = expires_at - datetime.now(UTC).timestamp()
    return f"{when} (in {seconds:.0f} s)"


def _print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


async def _demo(args: argparse.Namespace) -> int:
    from proxy.emulator import Emulator, EmulatorSettings

    async with Emulator(EmulatorSettings()) as emulator:
        ca_file = Path(tempfile.mkdtemp(prefix="serving-sidecar-demo-")) / "emulator-ca.pem"
        emulator.write_ca(ca_file)
        names = [spec.name for spec in emulator.settings.endpoints]
        flags: dict[str, Any] = {
            "host": emulator.workspace_url,
            "client_id": emulator.client_id,
            "ca_bundle": str(ca_file),
            "endpoint": names,
            "http_listen": args.http_listen,
            "admin_listen": args.admin_listen,
            "grpc_listen": args.grpc_listen,
            "drain_delay": 0.0,  # nothing balances load to a demo: Ctrl-C stops at once
        }
        settings = config.load(flags, environ={"DATABRICKS_CLIENT_SECRET": emulator.client_secret})
        return await _serve(Sidecar(settings), _demo_banner(settings, emulator.workspace_url, names))


def _demo_banner(settings: config.Settings, workspace_url: str, names: list[str]) -> str:
    base = f"http://{settings.http_listen}"
    curl = "curl -s -H 'Content-Type: application/json'"
    if isinstance(settings.http_listen, config.UnixAddress):
        base, curl = "http://localhost", f"{curl} --unix-socket {settings.http_listen.path}"
    examples = [
        ("fraud-ro", '{"dataframe_records": [{"amount": 12.5, "items": 3}]}'),
        ("chat-ro", '{"messages": [{"role": "user", "content": "hello there"}], "stream": true}'),
        ("plain-model", '{"instances": [[1, 2], [3, 4]]}'),
    ]
    return "\n".join(
        [
            f"serving-sidecar demo: emulated workspace at {workspace_url}, sidecar at {settings.http_listen}",
            f"endpoints: {', '.join(names)}; metrics at http://{settings.admin_listen}/metrics",
            "try:",
            *(f"  {curl} {base}/serving-endpoints/{name}/invocations -d '{body}'" for name, body in examples),
            f"gRPC: servingsidecar.v1.ServingProxy on {settings.grpc_listen} (reflection on; README section gRPC)",
            "press Ctrl-C to stop",
        ]
    )
