"""Metrics against real traffic: registry values, `promtool check metrics`, and a real Prometheus scrape."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import grpc

from proxy import __version__
from proxy._proto.servingsidecar.v1 import serving_proxy_pb2 as pb
from proxy._proto.servingsidecar.v1 import serving_proxy_pb2_grpc as pb_grpc
from proxy.app import Sidecar
from proxy.emulator import Emulator
from proxy.metrics import UNRESOLVED
from tests.integration.conftest import SidecarFactory, url

RECORDS = {"dataframe_records": [{"a": 1}]}
PROMETHEUS_START = 30.0  # seconds for Prometheus to start and scrape; every wait below is bounded

# How a test sends one call through a front: (sidecar, endpoint name) -> HTTP-equivalent status code.
# Every count below is asserted per front.
Call = Callable[[Sidecar, str], Awaitable[int]]
HTTP_STATUS_OF = {grpc.StatusCode.INTERNAL: 500, grpc.StatusCode.NOT_FOUND: 404}


def http_call(session: aiohttp.ClientSession) -> Call:
    async def call(sidecar: Sidecar, endpoint: str) -> int:
        async with session.post(url(sidecar, f"/serving-endpoints/{endpoint}/invocations"), json=RECORDS) as resp:
            await resp.read()
            return resp.status

    return call


def grpc_call() -> Call:
    async def call(sidecar: Sidecar, endpoint: str) -> int:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.port('grpc')}") as channel:
            stub = pb_grpc.ServingProxyStub(channel)
            try:
                await stub.Invoke(pb.InvokeRequest(endpoint=endpoint, json_body=json.dumps(RECORDS).encode()))
            except grpc.aio.AioRpcError as error:
                return HTTP_STATUS_OF[error.code()]
            return 200

    return call


def sample(sidecar: Sidecar, name: str, **labels: str) -> float:
    value = sidecar.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def need(tool: str) -> str:
    path = shutil.which(tool)
    assert path is not None, f"{tool} is not installed: run `bash .ci/install-system-packages` (Debian prometheus)"
    return path


async def test_counters_and_histograms_match_the_traffic_sent(
    emu: Emulator, make_sidecar: SidecarFactory, client: aiohttp.ClientSession
) -> None:
    fronts = {"http": http_call(client), "grpc": grpc_call()}
    ok_calls, failed_calls = 5, 2
    async with make_sidecar(endpoint=["fraud-ro"]) as sidecar:
        for front, call in fronts.items():
            emu.fail_next(failed_calls, 500, endpoint="fraud-ro")
            statuses = [await call(sidecar, "fraud-ro") for _ in range(failed_calls + ok_calls)]
            assert sorted(statuses) == [200] * ok_calls + [500] * failed_calls
            assert await call(sidecar, "no-such-endpoint") == 404

            def value(name: str, front: str = front, **labels: str) -> float:
                return sample(sidecar, name, front=front, **labels)

            assert value("serving_sidecar_requests_total", endpoint="fraud-ro", code="200") == ok_calls
            assert value("serving_sidecar_requests_total", endpoint="fraud-ro", code="500") == failed_calls
            assert value("serving_sidecar_requests_total", endpoint=UNRESOLVED, code="404") == 1
            assert (
                value("serving_sidecar_request_duration_seconds_count", endpoint="fraud-ro") == ok_calls + failed_calls
            )
            assert value("serving_sidecar_request_duration_seconds_sum", endpoint="fraud-ro") > 0
            assert value("serving_sidecar_in_flight_requests") == 0
        # The raw name never becomes a label value.
        assert b"no-such-endpoint" not in sidecar.metrics.exposition()
        total = (ok_calls + failed_calls) * len(fronts)
        for histogram in ("upstream_request_duration_seconds", "time_to_first_byte_seconds"):
            assert sample(sidecar, f"serving_sidecar_{histogram}_count", endpoint="fraud-ro") == total
            assert sample(sidecar, f"serving_sidecar_{histogram}_bucket", endpoint="fraud-ro", le="300.0") == total
        assert sample(sidecar, "serving_sidecar_endpoint_resolutions_total", result="success") == 1
        assert sample(sidecar, "serving_sidecar_endpoint_resolutions_total", result="not_found") == 1


async def test_token_connection_retry_and_build_metrics(
    emu: Emulator, make_sidecar: SidecarFactory, client: aiohttp.ClientSession
) -> None:
    call = http_call(client)
    async with make_sidecar(endpoint=["fraud-ro"], warm_connections=2) as sidecar:
        emu.fail_next(1, 503, retry_after=0, endpoint="fraud-ro")
        assert await call(sidecar, "fraud-ro") == 200  # the 503 was retried
        assert sample(sidecar, "serving_sidecar_retries_total", endpoint="fraud-ro", reason="unavailable") == 1
        assert sample(sidecar, "serving_sidecar_token_fetches_total", kind="workspace", result="success") == 1
        assert sample(sidecar, "serving_sidecar_token_fetches_total", kind="data_plane", result="success") == 1
        expiry = sample(
            sidecar, "serving_sidecar_token_expiry_timestamp_seconds", kind="data_plane", endpoint="fraud-ro"
        )
        assert expiry > time.time() + 60
        data_plane_host = emu.endpoint_url("fraud-ro").split("/")[2]
        assert sample(sidecar, "serving_sidecar_upstream_connects_total", host=data_plane_host, result="success") >= 2
        opened = sample(sidecar, "serving_sidecar_upstream_connections", host=data_plane_host, state="open")
        idle = sample(sidecar, "serving_sidecar_upstream_connections", host=data_plane_host, state="idle")
        assert opened >= idle >= 1
        assert sample(sidecar, "serving_sidecar_build_info", version=__version__) == 1
        hosts = {s.labels["host"] for m in sidecar.metrics.registry.collect() for s in m.samples if "host" in s.labels}
        workspace_host = emu.workspace_url.split("/")[2]
        assert hosts <= {workspace_host, *(emu.endpoint_url(n).split("/")[2] for n in ("fraud-ro", "chat-ro"))}


async def test_metrics_exposition_passes_promtool(sidecar: Sidecar, client: aiohttp.ClientSession) -> None:
    promtool = need("promtool")
    call = http_call(client)
    for name in ("fraud-ro", "chat-ro", "unknown-endpoint"):
        await call(sidecar, name)
    async with client.get(url(sidecar, "/metrics", "admin")) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.read()
    for family in ("requests_total", "upstream_connections", "upstream_connects_total", "build_info", "ready"):
        assert f"serving_sidecar_{family}".encode() in text
    checked = await asyncio.to_thread(
        subprocess.run, [promtool, "check", "metrics"], input=text, capture_output=True, timeout=30
    )
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_real_prometheus_scrapes_the_admin_listener(
    sidecar: Sidecar, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    binary = need("prometheus")
    assert await http_call(client)(sidecar, "fraud-ro") == 200
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: serving-sidecar\n    scrape_interval: 1s\n    scrape_timeout: 1s\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{sidecar.port('admin')}']\n"
    )
    log_file = (tmp_path / "prometheus.log").open("wb")
    server = subprocess.Popen(  # noqa: ASYNC220 - a long-running child, stopped in `finally`
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    query = 'serving_sidecar_requests_total{endpoint="fraud-ro",front="http",code="200"}'
    try:
        result = await _poll_query(client, f"http://127.0.0.1:{port}/api/v1/query", query, server)
    finally:
        server.kill()
        await asyncio.to_thread(server.wait, 10)
        log_file.close()
    assert result, (tmp_path / "prometheus.log").read_text()[-2000:]
    assert result[0]["metric"]["job"] == "serving-sidecar"
    assert float(result[0]["value"][1]) == 1.0


async def _poll_query(
    client: aiohttp.ClientSession, api: str, query: str, server: subprocess.Popen[bytes]
) -> list[dict[str, object]]:
    """The query's result vector once non-empty; [] if PROMETHEUS_START passes first (or Prometheus exits)."""
    deadline = time.monotonic() + PROMETHEUS_START
    while time.monotonic() < deadline and server.poll() is None:
        try:
            async with client.get(api, params={"query": query}, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                if resp.status == 200:
                    result: list[dict[str, object]] = (await resp.json())["data"]["result"]
                    if result:
                        return result
        except (aiohttp.ClientError, TimeoutError):
            pass  # not listening yet
        await asyncio.sleep(0.25)
    return []
