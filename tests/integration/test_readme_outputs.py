"""The sample outputs the README shows are what the sidecar (with the emulated workspace of `make run`) answers.

grpcurl is not installed here; its output is protobuf's JSON mapping printed with a two-space indent,
which `json_format.MessageToJson(message, indent=2)` produces the same way.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from pathlib import Path

import aiohttp
import grpc
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc

from proxy._proto.servingsidecar.v1 import serving_proxy_pb2 as pb
from proxy._proto.servingsidecar.v1 import serving_proxy_pb2_grpc as pb_grpc
from proxy.app import Sidecar
from tests.integration.conftest import url

README = (Path(__file__).parents[2] / "README.md").read_text()
DEPLOY_README = (Path(__file__).parents[2] / "deploy" / "README.md").read_text()


def sample_after(command_pattern: str) -> tuple[re.Match[str], str]:
    """The command matching `command_pattern` and the `# ` comment lines right after it, uncommented."""
    match = re.search(command_pattern + r"[^\n]*\n((?:# [^\n]*\n)+)", README, re.DOTALL)
    assert match, f"no sample for {command_pattern!r} in README.md"
    lines = [line[2:] for line in match.group(match.lastindex or 0).splitlines()]
    return match, "\n".join(line for line in lines if not line.startswith("("))


async def test_the_curl_sample_output(sidecar: Sidecar, client: aiohttp.ClientSession) -> None:
    match, expected = sample_after(r"invocations \\\n\s+-H 'Content-Type: application/json' -d '(\{\"dataframe[^']*)'")
    body = match.group(1)
    headers = {"Content-Type": "application/json"}
    async with client.post(url(sidecar, "/serving-endpoints/fraud-ro/invocations"), data=body, headers=headers) as resp:
        assert await resp.text() == expected


async def test_the_grpcurl_sample_outputs(sidecar: Sidecar) -> None:
    match, expected = sample_after(r"printf '%s' '([^']*)' \| base64[^\n]*\n\s+127\.0\.0\.1:8485 [^\n]*/Invoke")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.port('grpc')}") as channel:
        answer = await pb_grpc.ServingProxyStub(channel).Invoke(
            pb.InvokeRequest(endpoint="fraud-ro", json_body=match.group(1).encode()), timeout=10
        )
        assert json_format.MessageToJson(answer, indent=2) == expected
        note = re.search(r"# \(jsonBody is base64 of the endpoint's bytes, ([^)]*)\)", README)
        assert note and base64.b64decode(json.loads(expected)["jsonBody"]).decode() == note.group(1)
        _, expected_health = sample_after(r"grpc\.health\.v1\.Health/Check")
        check = health_pb2_grpc.HealthStub(channel).Check
        for _ in range(200):  # the health service follows readiness a moment after it changes
            health = await check(health_pb2.HealthCheckRequest(service=""))
            if health.status == health_pb2.HealthCheckResponse.SERVING:
                break
            await asyncio.sleep(0.05)
        assert json_format.MessageToJson(health, indent=2) == expected_health


async def test_the_deploy_guide_admin_sample_outputs(sidecar: Sidecar, client: aiohttp.ClientSession) -> None:
    readyz = re.search(r"curl -s http://127\.0\.0\.1:8486/readyz\n\s*# (.*)\n", DEPLOY_README)
    assert readyz, "deploy/README.md shows /readyz"
    async with client.get(url(sidecar, "/readyz", "admin")) as resp:
        assert await resp.text() == readyz.group(1)
    block = re.search(r"curl -s http://127\.0\.0\.1:8486/metrics[^\n]*\n((?:\s*# [^\n]*\n)+)", DEPLOY_README)
    assert block, "deploy/README.md shows /metrics"
    body = {"dataframe_records": [{"amount": 12.5}]}  # one call: the sidecar of the guide has served one endpoint
    async with client.post(url(sidecar, "/serving-endpoints/fraud-ro/invocations"), json=body) as resp:
        assert resp.status == 200
    async with client.get(url(sidecar, "/metrics", "admin")) as resp:
        exposition = (await resp.text()).splitlines()
    for line in block.group(1).splitlines():
        assert line.strip()[2:] in exposition, line
