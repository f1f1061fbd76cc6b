"""Command line: parse argv and dispatch to the subcommands run | demo | check | emulator."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from proxy import __version__
from proxy.emulator import cli as emulator_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="serving-sidecar",
        description="Local gateway to Databricks route-optimized model serving.",
    )
    parser.add_argument("--version", action="version", version=f"serving-sidecar {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    emulator_cli.add_arguments(
        sub.add_parser("emulator", help="run the emulated Databricks workspace (control + data plane)")
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "emulator":
        return emulator_cli.run(args)
    print(f"unknown command {args.command}", file=sys.stderr)
    return 2
