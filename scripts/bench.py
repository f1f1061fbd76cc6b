"""Latency and throughput: through the sidecar vs. calling the data plane directly, cold and warm.

    .venv/bin/python scripts/bench.py [--requests 5000] [--cold-requests 500] [--concurrency 1 32]

Three processes on one machine: the emulated workspace (`python -m proxy emulator`, real TLS), the sidecar
(`python -m proxy run`) and this client. Paths measured, each for `fraud-ro` with the same small body:
- cold script: what a script without the sidecar pays per call: new connections (TCP + TLS) to the
  workspace and to the data plane, a workspace token (client_credentials), a data-plane token
  (jwt-bearer exchange), then the call. The TLS context and the endpoint's URL and authorization
  details are prepared once, which flatters this path;
- warm direct: the same client keeping one keep-alive pool and one data-plane token (what the sidecar
  does for you, in your own process);
- sidecar HTTP (and sidecar gRPC when the front exists): unauthenticated calls to the local sidecar over
  a keep-alive connection.
Each cell is bounded by its request count and by --cell-limit seconds. Not part of `make test`: timings
depend on the machine; they are reported, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import ssl
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
from harness import EmulatorProcess, SidecarProcess, grpc_front_available, machine, percentile

ENDPOINT = "fraud-ro"
BODY = json.dumps({"dataframe_records": [{"amount": 12.5, "items": 3}]}).encode()
EXPECTED = {"predictions": [15.5]}
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"

Call = Callable[[], Awaitable[None]]


@dataclass
class Cell:
    path: str
    concurrency: int
    latencies: list[float]
    errors: int
    elapsed: float

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.elapsed if self.elapsed else 0.0


class Workspace:
    """Direct access to the emulated workspace, as a script without the sidecar would do it."""

    def __init__(self, emulator: EmulatorProcess) -> None:
        info = emulator.info
        self.url = info["workspace_url"]
        self.client_id = info["client_id"]
        self.secret = info["client_secret"]
        self.ssl = ssl.create_default_context(cafile=str(emulator.ca_file))
        self.invocation_url = ""
        self.authorization_details = ""

    async def workspace_token(self, session: aiohttp.ClientSession) -> str:
        data = {"grant_type": "client_credentials", "scope": "all-apis"}
        basic = base64.b64encode(f"{self.client_id}:{self.secret}".encode()).decode()
        headers = {"Authorization": f"Basic {basic}"}
        async with session.post(self.url + "/oidc/v1/token", data=data, headers=headers) as resp:
            resp.raise_for_status()
            return str((await resp.json())["access_token"])

    async def data_plane_token(self, session: aiohttp.ClientSession, workspace_token: str) -> str:
        data = {
            "grant_type": JWT_BEARER,
            "assertion": workspace_token,
            "authorization_details": self.authorization_details,
        }
        async with session.post(self.url + "/oidc/v1/token", data=data) as resp:
            resp.raise_for_status()
            return str((await resp.json())["access_token"])

    async def resolve(self) -> None:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.ssl)) as session:
            token = await self.workspace_token(session)
            headers = {"Authorization": f"Bearer {token}"}
            async with session.get(f"{self.url}/api/2.0/serving-endpoints/{ENDPOINT}", headers=headers) as resp:
                resp.raise_for_status()
                info = (await resp.json())["data_plane_info"]["query_info"]
        self.invocation_url = info["endpoint_url"]
        self.authorization_details = info["authorization_details"]


async def invoke(session: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> None:
    async with session.post(url, data=BODY, headers={"Content-Type": "application/json", **headers}) as resp:
        body = await resp.read()
        if resp.status != 200 or json.loads(body) != EXPECTED:
            raise RuntimeError(f"HTTP {resp.status}: {body[:200]!r}")


async def measure(path: str, call: Call, concurrency: int, requests: int, limit: float) -> Cell:
    for _ in range(min(concurrency, 8)):
        await call()  # warm-up, not counted
    latencies: list[float] = []
    errors = 0
    remaining = requests
    deadline = time.monotonic() + limit

    async def worker() -> None:
        nonlocal remaining, errors
        while remaining > 0 and time.monotonic() < deadline:
            remaining -= 1
            started = time.perf_counter()
            try:
                await call()
            except Exception as err:
                errors += 1
                if errors <= 3:
                    print(f"  {path}: {type(err).__name__}: {err}", flush=True)
                continue
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Cell(path, concurrency, latencies, errors, time.perf_counter() - started)


async def bench(args: argparse.Namespace) -> int:
    emulator = EmulatorProcess()
    emulator.start()
    sidecar: SidecarProcess | None = None
    channel = None
    try:
        workspace = Workspace(emulator)
        await workspace.resolve()
        sidecar = SidecarProcess(
            host=workspace.url,
            client_id=workspace.client_id,
            client_secret=workspace.secret,
            ca_file=emulator.ca_file,
            endpoints=[ENDPOINT],
            flags={"warm_connections": 4},
        )
        await sidecar.start()
        pool = aiohttp.TCPConnector(ssl=workspace.ssl, limit=0)
        async with (
            aiohttp.ClientSession(connector=pool) as warm,
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as local,
        ):
            token = await workspace.data_plane_token(warm, await workspace.workspace_token(warm))

            async def cold() -> None:
                connector = aiohttp.TCPConnector(ssl=workspace.ssl, force_close=True)
                async with aiohttp.ClientSession(connector=connector) as session:
                    dp_token = await workspace.data_plane_token(session, await workspace.workspace_token(session))
                    await invoke(session, workspace.invocation_url, {"Authorization": f"Bearer {dp_token}"})

            async def direct() -> None:
                await invoke(warm, workspace.invocation_url, {"Authorization": f"Bearer {token}"})

            sidecar_url = f"{sidecar.http_url}/serving-endpoints/{ENDPOINT}/invocations"

            async def through_sidecar() -> None:
                await invoke(local, sidecar_url, {})

            paths: list[tuple[str, Call, int]] = [
                ("cold script", cold, args.cold_requests),
                ("warm direct", direct, args.requests),
                ("sidecar HTTP", through_sidecar, args.requests),
            ]
            if grpc_front_available() and not args.no_grpc:
                channel, grpc_call = grpc_invoke(sidecar.grpc_port)
                paths.append(("sidecar gRPC", grpc_call, args.requests))
            cells = []
            for concurrency in args.concurrency:
                for path, call, count in paths:
                    cell = await measure(path, call, concurrency, count, args.cell_limit)
                    print(
                        f"  {path}, concurrency {concurrency}: {len(cell.latencies)} calls in {cell.elapsed:.1f} s",
                        flush=True,
                    )
                    cells.append(cell)
    finally:
        if channel is not None:
            await channel.close()
        if sidecar is not None:
            await sidecar.stop()
        emulator.stop()
    print_table(cells)
    return 1 if any(cell.errors for cell in cells) else 0


def grpc_invoke(port: int) -> tuple[object, Call]:
    import grpc

    from proxy._proto.servingsidecar.v1 import serving_proxy_pb2 as pb
    from proxy._proto.servingsidecar.v1 import serving_proxy_pb2_grpc as pb_grpc

    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    stub = pb_grpc.ServingProxyStub(channel)
    request = pb.InvokeRequest(endpoint=ENDPOINT, json_body=BODY)

    async def call() -> None:
        reply = await stub.Invoke(request, timeout=30)
        if json.loads(reply.json_body) != EXPECTED:
            raise RuntimeError(f"unexpected answer {reply.json_body[:200]!r}")

    return channel, call


def print_table(cells: list[Cell]) -> None:
    print()
    print(f"machine: {machine()}")
    print("client, emulated workspace (TLS) and sidecar are three processes sharing these cores")
    print(f"{'path':<14}{'conc.':>6}{'calls':>7}{'errors':>7}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}")
    for cell in cells:
        print(
            f"{cell.path:<14}{cell.concurrency:>6}{len(cell.latencies):>7}{cell.errors:>7}{cell.rate:>9.0f}"
            f"{percentile(cell.latencies, 0.5) * 1000:>9.2f}{percentile(cell.latencies, 0.99) * 1000:>9.2f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000, help="calls per cell, warm paths")
    parser.add_argument("--cold-requests", type=int, default=500, help="calls per cell, cold path")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--cell-limit", type=float, default=60.0, help="most seconds per cell")
    parser.add_argument("--no-grpc", action="store_true", help="skip the gRPC front even if present")
    args = parser.parse_args(argv)
    if not 1 <= args.requests <= 100_000 or not 1 <= args.cold_requests <= 10_000:
        parser.error("--requests must be within 1..100000 and --cold-requests within 1..10000")
    if not all(1 <= c <= 256 for c in args.concurrency) or not 1 <= args.cell_limit <= 300:
        parser.error("--concurrency values must be within 1..256 and --cell-limit within 1..300")
    return asyncio.run(bench(args))


if __name__ == "__main__":
    sys.exit(main())
