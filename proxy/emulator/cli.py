"""`serving-sidecar emulator`: placeholder until the emulator lands."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plain-http", action="store_true")


def run(args: argparse.Namespace) -> int:
    raise SystemExit("emulator not built yet")
