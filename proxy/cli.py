"""Command line: argv -> Settings, and the subcommands run | check | wait | demo | inject | injector | emulator.

Exit codes: 0 success (including a graceful drain after SIGTERM/SIGINT or POST /quitquitquit), 1 a check
failed (check) or the sidecar was not ready in time (wait), 2 bad configuration, input or usage (a busy
listen address included), 128 + signal number when a second signal cut the drain short.

A configuration or usage error is one line on stderr naming the option, with no traceback and nothing
secret in it (a listen address already in use at start included). SIGHUP never stops `run`: it re-reads
the client secret (or token) file by fetching a workspace token at once, and ends any token failure backoff.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import errno
import logging
import os
import shlex
import signal
import socket
import ssl
import sys
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from proxy import __version__, config, logs, runtime
from proxy.app import Sidecar
from proxy.errors import ConfigError, InjectError, SidecarError
from proxy.inject import AUTH_MODES, InjectOptions, inject

if TYPE_CHECKING:
    from proxy.injector import Injector

log = logging.getLogger("serving_sidecar")
CONFIG_ERROR_LIMIT = 500  # characters of a configuration error message


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line and exit 2, like configuration errors (argparse prints the whole usage)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: usage error: {_one_line(message)} (see --help)\n")


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
        else:  # numbers arrive as text and are parsed by config, whose errors name the flag
            parser.add_argument(flag, metavar=opt.key.upper(), help=help_text)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="serving-sidecar",
        description="Local gateway to Databricks route-optimized model serving.",
    )
    parser.add_argument("--version", action="version", version=f"serving-sidecar {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    add_settings_arguments(sub.add_parser("run", help="serve local callers (the sidecar itself)"))
    add_settings_arguments(
        sub.add_parser("check", help="validate configuration, fetch tokens, resolve endpoints, print a table")
    )
    wait = sub.add_parser("wait", help="wait until the sidecar is ready (its /readyz): exit 0, or 1 on timeout")
    add_settings_arguments(wait)
    wait.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS", help="give up after (default 60)")
    add_inject_commands(sub)
    demo = sub.add_parser("demo", help="emulated workspace + sidecar in one process, for a first look")
    demo.add_argument("--http-listen", default="127.0.0.1:8484")
    demo.add_argument("--admin-listen", default="127.0.0.1:8486")
    demo.add_argument("--grpc-listen", default="127.0.0.1:8485")
    # Its options are the emulator's own (`serving-sidecar emulator --help`): parsed there, so that the
    # product's commands never import the emulator.
    emulator = sub.add_parser(
        "emulator", help="run the emulated Databricks workspace (control + data plane)", add_help=False
    )
    emulator.add_argument("emulator_args", nargs=argparse.REMAINDER)
    return parser


def _emulator(argv: Sequence[str]) -> int:
    from proxy.emulator import cli as emulator_cli

    parser = argparse.ArgumentParser(prog="serving-sidecar emulator", description="the emulated Databricks workspace")
    emulator_cli.add_arguments(parser)
    return emulator_cli.run(parser.parse_args(argv))


def add_inject_commands(sub: Any) -> None:
    inject_parser = sub.add_parser(
        "inject", help="add serving-sidecar to the workloads of Kubernetes YAML (file or stdin) -> stdout"
    )
    inject_parser.add_argument("-f", "--filename", default="-", metavar="FILE", help="YAML to read (default: stdin)")
    add_inject_arguments(inject_parser)
    injector = sub.add_parser(
        "injector", help="mutating admission webhook: inject pods labelled serving-sidecar/inject=true"
    )
    injector.add_argument("--listen", default="0.0.0.0:8443", metavar="HOST:PORT", help="HTTPS address")
    injector.add_argument("--tls-cert", required=True, metavar="FILE", help="PEM certificate chain (re-read on change)")
    injector.add_argument("--tls-key", required=True, metavar="FILE", help="PEM private key (re-read on change)")
    injector.add_argument("--log-format", choices=config.LOG_FORMATS, default="text")
    add_inject_arguments(injector)


def add_inject_arguments(parser: argparse.ArgumentParser) -> None:
    """The injection defaults; a pod's serving-sidecar/<flag name> annotation overrides each of them."""
    defaults = InjectOptions()
    group = parser.add_argument_group("what to inject (each also a pod annotation serving-sidecar/<name>)")
    group.add_argument("--image", default=defaults.image, help=f"sidecar image (default {defaults.image})")
    group.add_argument(
        "--config-map",
        default=defaults.config_map,
        metavar="NAME",
        help=f"ConfigMap holding config.yaml: host, client_id, endpoints... (default {defaults.config_map})",
    )
    group.add_argument(
        "--secret",
        default=defaults.secret,
        metavar="NAME",
        help=f"oauth-m2m: Secret holding client-secret (default {defaults.secret})",
    )
    group.add_argument("--auth", choices=AUTH_MODES, default=defaults.auth, help="default oauth-m2m")
    group.add_argument(
        "--token-audience", metavar="AUDIENCE", help="workload-identity: the projected token's audience (required)"
    )
    group.add_argument(
        "--endpoint", action="append", default=[], metavar="NAME", help="endpoint to warm at start (repeatable)"
    )


def _inject_options(args: argparse.Namespace) -> InjectOptions:
    return InjectOptions(
        image=args.image,
        config_map=args.config_map,
        secret=args.secret,
        auth=args.auth,
        token_audience=args.token_audience,
        endpoints=tuple(args.endpoint),
    ).checked("options")


def main(argv: Sequence[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else list(argv)
    if arguments[:1] == ["emulator"]:
        return _emulator(arguments[1:])
    args = build_parser().parse_args(arguments)
    if args.command == "emulator":
        return _emulator(args.emulator_args)
    logs.configure()
    if args.command in ("inject", "injector", "wait"):
        return {"inject": _inject, "injector": _injector, "wait": _wait}[args.command](args)
    try:
        return _command(args)
    except ConfigError as error:
        print(f"serving-sidecar: configuration error: {_config_message(error)}", file=sys.stderr)
        return 2


def _command(args: argparse.Namespace) -> int:
    if args.command == "demo":
        return runtime.run_on_loop(_demo(args), "uvloop")
    settings = config.load(vars(args))
    logs.configure(fmt=settings.log_format, level=settings.log_level, secrets=_known_secrets(settings))
    if settings.insecure_host:
        log.warning(
            "the workspace %s is plain http:// (--allow-insecure-loopback-host): the client secret and every "
            "token travel unencrypted; for local experiments only",
            settings.host,
        )
    if args.command == "check":
        return runtime.run_on_loop(_check(settings), settings.event_loop)
    return runtime.run_on_loop(_serve(Sidecar(settings)), settings.event_loop)


def _config_message(error: ConfigError) -> str:
    """One line, bounded, redacted: a message may quote a value, and values can be anything."""
    redact = logs.Redactor([os.environ.get("DATABRICKS_CLIENT_SECRET")])
    return logs.untrusted_text(str(error), limit=CONFIG_ERROR_LIMIT, redact=redact)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _known_secrets(settings: config.Settings) -> list[str]:
    """Secret values to redact from logs by value (tokens are caught by shape): the client secret and the
    egress proxy's password."""
    secrets = [settings.client_secret] if settings.client_secret else []
    proxy = settings.egress_proxy
    if proxy is not None and proxy.authorization:  # the egress proxy's user:password, encoded and not
        encoded = proxy.authorization.removeprefix("Basic ")
        secrets += [encoded, base64.b64decode(encoded).decode().partition(":")[2]]
    if settings.client_secret_file is not None:
        with contextlib.suppress(OSError, UnicodeDecodeError):  # reported when a token is fetched
            secrets.append(settings.client_secret_file.read_text().strip())
    return secrets


SIGNALS = (signal.SIGTERM, signal.SIGINT)


async def _serve(sidecar: Sidecar, banner: str = "") -> int:
    """Serve until SIGTERM/SIGINT or POST /quitquitquit, then drain and return 0; a second signal exits at
    once; SIGHUP reloads. A listener that cannot bind is a ConfigError, raised after whatever was started
    is stopped.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_hangup() -> None:
        logs.add_secrets(_known_secrets(sidecar.settings))  # a rotated secret is redacted by value too
        sidecar.reload_credentials()

    def on_signal(signum: int) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():
            log.warning("second %s: exiting at once, requests in flight are cut", name)
            runtime.exit_now(128 + signum)
        log.info("%s: draining (send it again to exit at once)", name)
        stop.set()

    def on_quit() -> None:
        if not stop.is_set():
            log.info("POST /quitquitquit: draining")
            stop.set()

    sidecar.on_quit.append(on_quit)
    for sig in SIGNALS:
        loop.add_signal_handler(sig, on_signal, sig)
    loop.add_signal_handler(signal.SIGHUP, on_hangup)
    try:
        try:
            await sidecar.start()
        except ConfigError:
            await sidecar.stop(grace=0)
            raise
        if banner:
            print(banner, flush=True)
        await stop.wait()
        await sidecar.drain()
    finally:
        for sig in (*SIGNALS, signal.SIGHUP):
            loop.remove_signal_handler(sig)
    return 0


def _inject(args: argparse.Namespace) -> int:
    """`inject`: YAML from a file or stdin, the same documents on stdout with serving-sidecar added."""
    try:
        options = _inject_options(args)
        text = sys.stdin.read() if args.filename == "-" else Path(args.filename).read_text()
        from proxy import manifests  # PyYAML: loaded for this command only

        sys.stdout.write(manifests.transform_stream(text, lambda doc: inject(doc, options)))
    except OSError as error:
        print(f"serving-sidecar inject: cannot read {args.filename}: {error.strerror}", file=sys.stderr)
        return 2
    except (InjectError, UnicodeDecodeError) as error:
        print(f"serving-sidecar inject: {args.filename if args.filename != '-' else 'stdin'}: {error}", file=sys.stderr)
        return 2
    return 0


def _injector(args: argparse.Namespace) -> int:
    """`injector`: the admission webhook over HTTPS until SIGTERM/SIGINT, then exit 0."""
    logs.configure(fmt=args.log_format)
    try:
        options = _inject_options(args)
        listen = config.parse_address(args.listen, "listen")
    except (InjectError, ConfigError) as error:
        print(f"serving-sidecar injector: {error}", file=sys.stderr)
        return 2
    from proxy.injector import Injector  # aiohttp's server: loaded for this command only

    return asyncio.run(_run_injector(Injector(options, listen, Path(args.tls_cert), Path(args.tls_key))))


async def _run_injector(injector: Injector) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    try:
        await injector.start()
    except (OSError, ssl.SSLError) as error:
        print(f"serving-sidecar injector: cannot serve on {injector.listen}: {error}", file=sys.stderr)
        return 2
    try:
        await stop.wait()
        log.info("stopping the injector")
    finally:
        await injector.stop()
        for sig in SIGNALS:
            loop.remove_signal_handler(sig)
    return 0


def _wait(args: argparse.Namespace) -> int:
    """`wait`: poll the admin listener of the configured sidecar until it is ready (0) or the timeout (1)."""
    try:
        admin = config.load_admin_address(vars(args))
    except ConfigError as error:
        print(f"serving-sidecar wait: configuration error: {error}", file=sys.stderr)
        return 2
    from proxy import probe  # aiohttp's client: loaded for this command only

    outcome = asyncio.run(probe.wait_ready(admin, max(0.0, args.timeout)))
    url = probe.readyz_url(admin)
    if outcome.ready:
        print(f"serving-sidecar wait: ready ({url})", file=sys.stderr)
        return 0
    print(f"serving-sidecar wait: not ready after {args.timeout:g} s ({url}): {outcome.detail}", file=sys.stderr)
    return 1


LISTEN_OPTIONS = (("http-listen", "http_listen"), ("grpc-listen", "grpc_listen"), ("admin-listen", "admin_listen"))


def listen_error(settings: config.Settings) -> str | None:
    """One line naming the first listen option whose address cannot be bound now (in use, not local), else None.

    Checked before starting, because the gRPC server binds with SO_REUSEPORT and would share a port that
    another sidecar holds instead of failing.
    """
    for flag, key in LISTEN_OPTIONS:
        address: config.Address = getattr(settings, key)
        problem = _bind_problem(address)
        if problem is not None:
            return f"--{flag} {address}: {problem}; pass --{flag} HOST:PORT with a free port"
    return None


def _bind_problem(address: config.Address) -> str | None:
    if address.port == 0:
        return None
    try:
        family, kind, proto, _, sockaddr = socket.getaddrinfo(
            address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the listeners do
            sock.bind(sockaddr)
    except socket.gaierror as error:
        return f"cannot resolve {address.host}: {error.strerror}"
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            return "address already in use (another serving-sidecar or demo running?)"
        return f"cannot listen there: {error.strerror}"
    return None


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
    try:
        when = datetime.fromtimestamp(expires_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):  # beyond year 9999: oauth clamps lifetimes, this is a backstop
        when = "far future"
    seconds = expires_at - datetime.now(UTC).timestamp()
    return f"{when} (in {seconds:.0f} s)"


def _print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


async def _demo(args: argparse.Namespace) -> int:
    from proxy.emulator import Emulator, EmulatorSettings

    with tempfile.TemporaryDirectory(prefix="serving-sidecar-demo-") as tmp:
        async with Emulator(EmulatorSettings()) as emulator:
            ca_file = emulator.write_ca(Path(tmp) / "emulator-ca.pem")
            secret_file = Path(tmp) / "client-secret"
            secret_file.touch(mode=0o600)
            secret_file.write_text(emulator.client_secret + "\n")
            names = [spec.name for spec in emulator.settings.endpoints]
            flags: dict[str, Any] = {
                "host": emulator.workspace_url,
                "client_id": emulator.client_id,
                "client_secret_file": str(secret_file),
                "ca_bundle": str(ca_file),
                "endpoint": names,
                "http_listen": args.http_listen,
                "admin_listen": args.admin_listen,
                "grpc_listen": args.grpc_listen,
                "drain_delay": 0.0,  # nothing balances load to a demo: Ctrl-C stops at once
            }
            settings = config.load(flags, environ={})
            busy = listen_error(settings)
            if busy is not None:
                print(f"serving-sidecar demo: {busy}", file=sys.stderr)
                return 2
            try:
                return await _serve(Sidecar(settings), _demo_banner(settings, names))
            except OSError as error:  # bound by something else since listen_error looked
                print(f"serving-sidecar demo: cannot listen: {error}", file=sys.stderr)
                return 2


def _demo_banner(settings: config.Settings, names: list[str]) -> str:
    base = f"http://{settings.http_listen}"
    curl = "curl -s -H 'Content-Type: application/json'"
    if isinstance(settings.http_listen, config.UnixAddress):
        base, curl = "http://localhost", f"{curl} --unix-socket {settings.http_listen.path}"
    examples = [
        ("fraud-ro", '{"dataframe_records": [{"amount": 12.5, "items": 3}]}'),
        ("chat-ro", '{"messages": [{"role": "user", "content": "hello there"}], "stream": true}'),
        ("plain-model", '{"instances": [[1, 2], [3, 4]]}'),
    ]
    command = _own_command()
    check = [
        command,
        "check",
        *("--host", settings.host, "--client-id", settings.client_id),
        *("--client-secret-file", str(settings.client_secret_file), "--ca-bundle", str(settings.ca_bundle)),
        *("--egress-proxy", "off"),  # the emulated workspace is on loopback: a proxy in the shell must not catch it
        *(arg for name in names[:2] for arg in ("--endpoint", name)),
    ]
    return "\n".join(
        [
            f"serving-sidecar demo: emulated workspace at {settings.host}, sidecar at {settings.http_listen}",
            f"endpoints: {', '.join(names)}; metrics at http://{settings.admin_listen}/metrics",
            "try:",
            *(f"  {curl} {base}/serving-endpoints/{name}/invocations -d '{body}'" for name, body in examples),
            f"gRPC: servingsidecar.v1.ServingProxy on {settings.grpc_listen} (reflection on; README section gRPC)",
            "the preflight, against the emulated workspace (its client id, a secret file and the CA this demo wrote):",
            f"  {shlex.join(check)}",
            f"the commands are in {Path(command).parent}/ (serving-sidecar, python, ...)"
            if "/" in command
            else "the commands are on your PATH",
            "press Ctrl-C to stop",
        ]
    )


def _own_command() -> str:
    """This installation's serving-sidecar script, relative to the working directory when under it."""
    script = Path(sys.executable).parent / "serving-sidecar"
    if not script.exists():
        return "serving-sidecar"
    with contextlib.suppress(ValueError):
        return str(script.relative_to(Path.cwd()))
    return str(script)
