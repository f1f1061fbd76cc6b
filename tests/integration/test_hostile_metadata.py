"""Credentials travel only over TLS and only to their own host, whatever the endpoint metadata says; the
metadata itself is validated and bounded at the edge. The emulator's `metadata_overrides` knob plays the
hostile workspace; a plain-HTTP capture server and an HTTPS fake data plane (another CA) play the hosts
that must never see a bearer, or never the workspace token."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest

from proxy import endpoints
from proxy.app import Sidecar
from proxy.credentials.oauth import OAuthClient
from proxy.emulator import Emulator
from proxy.endpoints import Resolution
from proxy.errors import TokenError, UpstreamUnreachable
from proxy.upstream import build_ssl_context
from proxy.upstream.control import MAX_CONTROL_PLANE_BYTES, ControlPlane
from proxy.upstream.pool import Timeouts, Upstream
from tests.integration.conftest import SidecarFactory, url
from tests.integration.fakes import CaptureServer, OtherCA, TlsServer, sidecar_with

RECORDS = {"dataframe_records": [{"a": 1, "b": 2}]}
FRAUD = "/serving-endpoints/fraud-ro/invocations"
SERVED = "/serving-endpoints/fraud-ro/served-models/fraud-ro-1/invocations"


async def call(client: aiohttp.ClientSession, sidecar: Sidecar, path: str = FRAUD) -> tuple[int, dict[str, Any]]:
    async with client.post(url(sidecar, path), json=RECORDS) as resp:
        return resp.status, await resp.json(content_type=None)


def resolutions(sidecar: Sidecar, result: str) -> float:
    value = sidecar.metrics.registry.get_sample_value("serving_sidecar_endpoint_resolutions_total", {"result": result})
    return value or 0.0


def query_info(endpoint_url: str | None, details: str | None) -> dict[str, Any]:
    return {"data_plane_info": {"query_info": {"endpoint_url": endpoint_url, "authorization_details": details}}}


# --- no bearer ever reaches a plain-HTTP host --------------------------------------------------------------


def hostile_patches(target: str, details: str) -> dict[str, dict[str, Any]]:
    """Metadata answers that point fraud-ro at `target` in every way the workspace could."""
    return {
        "http_url_with_details": query_info(target, details),
        "http_url_without_details": query_info(target, None),
        "http_url_empty_details": query_info(target, ""),
        "top_level_url_only": {"endpoint_url": target, "data_plane_info": None},
        "not_route_optimized": {"route_optimized": False, "endpoint_url": target, **query_info(target, details)},
        "route_optimized_as_string": {"route_optimized": "true", **query_info(target, None)},
    }


PATCHES = list(hostile_patches("x", "y"))


@pytest.mark.parametrize("patch_name", PATCHES)
@pytest.mark.parametrize("path", [FRAUD, SERVED])
async def test_no_bearer_ever_reaches_a_plain_http_host(
    emu: Emulator, make_sidecar: SidecarFactory, client: aiohttp.ClientSession, patch_name: str, path: str
) -> None:
    async with CaptureServer() as capture:
        target = f"http://127.0.0.1:{capture.port}/1/serving-endpoints/fraud-ro/invocations"
        patch = hostile_patches(target, emu.authorization_details("fraud-ro"))[patch_name]
        emu.faults.metadata_overrides = {"fraud-ro": patch}
        async with make_sidecar(endpoint=["fraud-ro"]) as sidecar:  # warmed at start too
            answers = [await call(client, sidecar, path) for _ in range(3)]
    assert b"Bearer" not in capture.received and b"authorization" not in capture.received.lower()
    assert capture.connections == 0
    for status, body in answers:
        if patch_name == "not_route_optimized":
            assert status != 502  # served at the workspace path: the workspace's own answer
        else:
            assert (status, body["error_code"]) == (502, "BAD_GATEWAY"), body


def naive_resolution(name: str, doc: Mapping[str, Any], workspace_url: str) -> Resolution:
    """What the sidecar once did with metadata: take the URL and the details as they come."""
    query = doc["data_plane_info"]["query_info"]
    return Resolution(name, doc["id"], query["endpoint_url"], query.get("authorization_details"), True)


@pytest.mark.parametrize("details", [True, False])
async def test_the_token_rule_holds_even_if_metadata_validation_is_bypassed(
    emu: Emulator, sidecar: Sidecar, client: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch, details: bool
) -> None:
    monkeypatch.setattr(endpoints, "parse_resolution", naive_resolution)  # the first line of defence is gone
    async with CaptureServer() as capture:
        target = f"http://127.0.0.1:{capture.port}/1/serving-endpoints/fraud-ro/invocations"
        emu.faults.metadata_overrides = {
            "fraud-ro": query_info(target, emu.authorization_details("fraud-ro") if details else None)
        }
        status, body = await call(client, sidecar)
    assert capture.received == b"" and capture.connections == 0
    assert status == 502 and "refusing to send" in body["message"], body


async def test_refusals_name_their_cause(emu: Emulator, sidecar: Sidecar, client: aiohttp.ClientSession) -> None:
    emu.faults.metadata_overrides = {
        "fraud-ro": query_info("http://127.0.0.1:9/1/serving-endpoints/fraud-ro/invocations", "x"),
        "features-ro": query_info(emu.endpoint_url("features-ro"), None),
    }
    status, body = await call(client, sidecar)
    assert status == 502 and "not an https URL" in body["message"] and "tokens travel only over TLS" in body["message"]
    status, body = await call(client, sidecar, "/serving-endpoints/features-ro/invocations")
    assert status == 502 and "no authorization_details" in body["message"]
    assert resolutions(sidecar, "error") == 2 and resolutions(sidecar, "success") == 0


async def test_an_https_url_to_a_plain_http_host_fails_the_handshake_before_any_bearer(
    emu: Emulator, sidecar: Sidecar, client: aiohttp.ClientSession
) -> None:
    async with CaptureServer() as capture:
        target = f"https://127.0.0.1:{capture.port}/1/serving-endpoints/fraud-ro/invocations"
        emu.faults.metadata_overrides = {"fraud-ro": query_info(target, emu.authorization_details("fraud-ro"))}
        status, body = await call(client, sidecar)
        assert status == 502, body
    assert capture.received  # the TLS ClientHello arrived ...
    assert b"Bearer" not in capture.received  # ... and nothing else


# --- no workspace token ever reaches a data-plane host -----------------------------------------------------


OK_ANSWER = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 19\r\n\r\n{"predictions": []}'


def bearer_kinds(server: TlsServer) -> list[str]:
    kinds = []
    for head in server.requests:
        for line in head.decode().split("\r\n"):
            if line.lower().startswith("authorization:"):
                token = line.split(":", 1)[1].strip().removeprefix("Bearer ")
                kinds.append(jwt.decode(token, options={"verify_signature": False})["kind"])
    return kinds


async def test_the_fake_data_plane_never_sees_the_workspace_token(
    emu: Emulator, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    ca = OtherCA()
    async with (
        TlsServer(ca, OK_ANSWER) as data_plane,
        sidecar_with(emu, ca.bundle(emu, tmp_path / "ca.pem")) as sidecar,
    ):
        target = f"https://127.0.0.1:{data_plane.port}/1/serving-endpoints/fraud-ro/invocations"
        details = emu.authorization_details("fraud-ro")
        emu.faults.metadata_overrides = {
            "fraud-ro": query_info(target, None),  # route-optimized, no authorization_details: refused
            "features-ro": {"endpoint_url": target, "data_plane_info": None},
            "plain-model": {"route_optimized": True, **query_info(target, "")},
            "chat-ro": query_info(target, details),  # a proper data-plane URL: gets a data-plane token
        }
        for name in ("fraud-ro", "features-ro", "plain-model"):
            status, body = await call(client, sidecar, f"/serving-endpoints/{name}/invocations")
            assert status == 502 and "no authorization_details" in body["message"], body
        assert data_plane.requests == []
        status, _ = await call(client, sidecar, "/serving-endpoints/chat-ro/invocations")
        assert status == 200
    assert bearer_kinds(data_plane) == ["data_plane"]


# --- malformed and oversized metadata ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("patch", "named"),
    [
        ({"state": "READY"}, "state must be an object"),
        ({"data_plane_info": []}, "data_plane_info must be an object"),
        ({"data_plane_info": {"query_info": {"endpoint_url": 7}}}, "query_info.endpoint_url must be a string"),
        ({"route_optimized": 1}, "route_optimized must be true or false"),
    ],
)
async def test_malformed_metadata_is_a_502_counted_as_an_error(
    emu: Emulator, sidecar: Sidecar, client: aiohttp.ClientSession, patch: dict[str, Any], named: str
) -> None:
    emu.faults.metadata_overrides = {"fraud-ro": patch}
    status, body = await call(client, sidecar)
    assert (status, body["error_code"]) == (502, "BAD_GATEWAY")
    assert named in body["message"] and "Traceback" not in body["message"]
    assert resolutions(sidecar, "error") == 1 and resolutions(sidecar, "success") == 0


async def test_a_metadata_answer_over_one_mib_is_refused(
    emu: Emulator, sidecar: Sidecar, client: aiohttp.ClientSession
) -> None:
    emu.faults.metadata_overrides = {"fraud-ro": {"description": "x" * (MAX_CONTROL_PLANE_BYTES + 1)}}
    status, body = await call(client, sidecar)
    assert status == 502 and f"over {MAX_CONTROL_PLANE_BYTES} bytes" in body["message"], body
    assert resolutions(sidecar, "error") == 1
    emu.faults.metadata_overrides = {"fraud-ro": {"description": "x" * (MAX_CONTROL_PLANE_BYTES // 2)}}
    await asyncio.sleep(5.1)  # the refusal is remembered for 5 s
    assert (await call(client, sidecar))[0] == 200


class EndlessServer:
    """TLS on loopback answering 60 MB to one request, counting the bytes the peer let it send.

    Plain blocking sockets in a thread: a send to a peer that went away fails at once, so `sent` is what
    the peer (with the kernel's buffers) really took.
    """

    TOTAL = 60 * 1024 * 1024
    CHUNK = 64 * 1024

    def __init__(self, ca: OtherCA) -> None:
        self._context = ca.server_context()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(30)
        self.port = int(self._listener.getsockname()[1])
        self.sent = 0
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._listener.close()
        self._thread.join(30)

    def _serve(self) -> None:
        try:
            conn, _ = self._listener.accept()
            with self._context.wrap_socket(conn, server_side=True) as tls:
                received = b""
                while b"\r\n\r\n" not in received:
                    received += tls.recv(65536)
                tls.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {self.TOTAL}\r\n\r\n".encode())
                chunk = b"x" * self.CHUNK
                while self.sent < self.TOTAL:
                    tls.sendall(chunk)
                    self.sent += len(chunk)
        except OSError:
            pass  # the peer went away (or nobody came)
        finally:
            self.done.set()


@pytest.mark.parametrize("caller", ["metadata", "token"])
async def test_a_60_mb_control_plane_answer_is_not_read_whole(tmp_path: Path, caller: str) -> None:
    ca = OtherCA()
    server = EndlessServer(ca)
    base = f"https://127.0.0.1:{server.port}"
    pools = Upstream(ssl_context=build_ssl_context(ca.write(tmp_path / "ca.pem")), pool_size=4, timeouts=Timeouts())
    upstream = ControlPlane(pools)
    try:
        if caller == "metadata":
            with pytest.raises(UpstreamUnreachable, match=f"over {MAX_CONTROL_PLANE_BYTES} bytes"):
                await upstream.fetch("GET", f"{base}/api/2.0/serving-endpoints/x", headers={})
        else:
            oauth = OAuthClient(upstream.fetch, token_url=f"{base}/oidc/v1/token", client_id="c")
            with pytest.raises(TokenError, match=f"over {MAX_CONTROL_PLANE_BYTES} bytes") as refused:
                await oauth.jwt_bearer(assertion="a", authorization_details="[]")
            assert refused.value.error == "unreachable"
        assert await asyncio.to_thread(server.done.wait, 30)
    finally:
        server.close()
        pools.close()
    assert server.sent < 16 * 1024 * 1024  # the reader stopped: the rest was never sent
