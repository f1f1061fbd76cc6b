"""Many concurrent client connections held open against a sidecar process; prints its peak RSS.

    .venv/bin/python scripts/connections.py [--connections 1000] [--pool-size 256] [--latency 0.2]

The emulated workspace runs in this process (real TLS) with `--latency` added to `fraud-ro`; the sidecar
runs as `python -m proxy run` (its own process, so /proc/<pid>/status VmHWM is its own peak RSS). The
script opens `--connections` keep-alive connections, sends one request on each at once, then a second
request on each of the same connections, checks every answer, and prints the sidecar's RSS before and
its peak after. Exit status 1 if any answer was wrong. Bounded: each round must finish within 120 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

from harness import SidecarProcess, machine, mib, peak_rss_kib, rss_kib

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for tests.integration
from proxy.emulator import Emulator, EmulatorSettings
from tests.integration.rawhttp import Connection, exchange

PATH = "/serving-endpoints/fraud-ro/invocations"
ROUND_LIMIT = 120.0


async def run(args: argparse.Namespace) -> int:
    settings = EmulatorSettings()
    settings.faults.latency["fraud-ro"] = args.latency
    work = Path(tempfile.mkdtemp(prefix="serving-sidecar-connections-"))
    async with Emulator(settings) as emu:
        sidecar = SidecarProcess(
            host=emu.workspace_url,
            client_id=emu.client_id,
            client_secret=emu.client_secret,
            ca_file=emu.write_ca(work / "ca.pem"),
            endpoints=["fraud-ro"],
            flags={
                "pool_size": args.pool_size,
                "drain_delay": 0,
                "max_in_flight": max(1024, 2 * args.connections),
                "max_in_flight_per_endpoint": max(512, 2 * args.connections),
            },
            log_dir=work,
        )
        await sidecar.start()
        try:
            return await drive(emu, sidecar, args)
        finally:
            await sidecar.stop()


async def drive(emu: Emulator, sidecar: SidecarProcess, args: argparse.Namespace) -> int:
    print(f"machine: {machine()}")
    baseline = rss_kib(sidecar.pid)
    opening = asyncio.Semaphore(100)

    async def connect() -> Connection:
        async with opening:
            return await asyncio.open_connection("127.0.0.1", sidecar.http_port)

    connections = await asyncio.gather(*(connect() for _ in range(args.connections)))
    wrong = 0
    try:
        for round_number in range(1, args.rounds + 1):

            async def one(index: int, round_number: int = round_number) -> bool:
                body = json.dumps({"dataframe_records": [{"connection": index, "round": round_number}]}).encode()
                try:
                    answer = await exchange(connections[index], PATH, body)
                except (OSError, asyncio.IncompleteReadError) as err:
                    print(f"connection {index}: {type(err).__name__}: {err}")
                    return False
                ok = answer.status == 200 and answer.json() == {"predictions": [index + round_number]}
                if not ok:
                    print(f"connection {index}: HTTP {answer.status}: {answer.body[:200]!r}")
                return ok

            started = time.monotonic()
            async with asyncio.timeout(ROUND_LIMIT):
                results = await asyncio.gather(*(one(i) for i in range(args.connections)))
            wrong += results.count(False)
            print(
                f"round {round_number}: {results.count(True)}/{args.connections} correct answers in "
                f"{time.monotonic() - started:.2f} s, sidecar RSS now {mib(rss_kib(sidecar.pid))}"
            )
    finally:
        for _, writer in connections:
            writer.close()
    peak = peak_rss_kib(sidecar.pid)
    counted = emu.counters.snapshot()
    print(
        f"{args.connections} connections x {args.rounds} requests, upstream pool {args.pool_size}, "
        f"latency {args.latency} s: {wrong} wrong; emulator saw {counted['data_plane_connections']} "
        f"data-plane connections and {counted['invocations']['fraud-ro'].get('200', 0)} successful invocations"
    )
    print(f"sidecar RSS: ready and idle {mib(baseline)}, peak (VmHWM) {mib(peak)}")
    return 0 if wrong == 0 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2, help="requests per connection, sent round by round")
    parser.add_argument("--pool-size", type=int, default=256, help="the sidecar's upstream pool size")
    parser.add_argument("--latency", type=float, default=0.2, help="seconds the emulated model takes")
    args = parser.parse_args(argv)
    if not 1 <= args.connections <= 5000 or not 1 <= args.rounds <= 10:
        parser.error("--connections must be within 1..5000 and --rounds within 1..10")
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
