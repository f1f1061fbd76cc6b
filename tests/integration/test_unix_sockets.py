"""Both fronts on Unix domain sockets: served, given their mode and group before anyone connects, removed on stop."""

from __future__ import annotations

import grp
import json
import os
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import grpc
import pytest

from proxy._proto.servingsidecar.v1 import serving_proxy_pb2 as pb
from proxy._proto.servingsidecar.v1 import serving_proxy_pb2_grpc as pb_grpc
from proxy.downstream import unix
from proxy.emulator import Emulator
from proxy.errors import ConfigError

from .conftest import SidecarFactory

RECORDS = {"dataframe_records": [{"a": 1, "b": 2.5}, {"a": 3}]}


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A short directory: socket paths are limited to 107 bytes."""
    with tempfile.TemporaryDirectory(prefix="ss-") as name:
        yield Path(name)


def mode_of(path: Path) -> int:
    found = os.lstat(path)
    assert stat.S_ISSOCK(found.st_mode), path
    return stat.S_IMODE(found.st_mode)


def stale_socket(path: Path) -> None:
    """A socket file nobody listens on, as a killed process leaves it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.close()


async def test_both_fronts_serve_on_unix_sockets_and_remove_them_on_stop(
    emu: Emulator, make_sidecar: SidecarFactory, socket_dir: Path
) -> None:
    http_path, grpc_path = socket_dir / "http.sock", socket_dir / "grpc.sock"
    stale_socket(http_path)  # replaced at start
    flags = {"http_listen": f"unix:{http_path}", "grpc_listen": f"unix:{grpc_path}"}
    async with make_sidecar(**flags) as sidecar:  # ready: both listeners are up
        assert (mode_of(http_path), mode_of(grpc_path)) == (0o660, 0o660)  # the default --socket-mode
        connector = aiohttp.UnixConnector(path=str(http_path))
        target = "http://localhost/serving-endpoints/fraud-ro/invocations"
        async with aiohttp.ClientSession(connector=connector) as session, session.post(target, json=RECORDS) as resp:
            assert resp.status == 200
            assert await resp.json() == {"predictions": [3.5, 3]}
        async with grpc.aio.insecure_channel(f"unix:{grpc_path}") as channel:
            body = json.dumps(RECORDS).encode()
            answer = await pb_grpc.ServingProxyStub(channel).Invoke(
                pb.InvokeRequest(endpoint="fraud-ro", json_body=body)
            )
            assert json.loads(answer.json_body) == {"predictions": [3.5, 3]}
        assert sidecar.port("http") == 0
    assert not http_path.exists()
    assert not grpc_path.exists()
    assert emu.counters.snapshot()["invocations"] == {"fraud-ro": {"200": 2}}


async def test_socket_mode_and_group_are_applied(make_sidecar: SidecarFactory, socket_dir: Path) -> None:
    group = grp.getgrgid(os.getgid())
    http_path, grpc_path = socket_dir / "http.sock", socket_dir / "grpc.sock"
    flags = {
        "http_listen": f"unix:{http_path}",
        "grpc_listen": f"unix:{grpc_path}",
        "socket_mode": "0600",
        "socket_group": group.gr_name,
    }
    async with make_sidecar(**flags):
        for path in (http_path, grpc_path):
            assert mode_of(path) == 0o600
            assert os.lstat(path).st_gid == group.gr_gid


@pytest.mark.parametrize("front", ["http", "grpc"])
async def test_a_served_socket_or_another_file_is_left_alone(
    make_sidecar: SidecarFactory, socket_dir: Path, front: str
) -> None:
    path = socket_dir / f"{front}.sock"
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other.bind(str(path))
    other.listen(1)  # another process serves here
    try:
        with pytest.raises((OSError, ConfigError), match="another process is listening on it"):
            async with make_sidecar(wait_ready=False, **{f"{front}_listen": f"unix:{path}"}):
                pass
        assert stat.S_ISSOCK(os.lstat(path).st_mode)  # still there
    finally:
        other.close()
    path.unlink()
    path.write_text("not a socket")
    with pytest.raises((OSError, ConfigError), match="not a socket is in the way"):
        async with make_sidecar(wait_ready=False, **{f"{front}_listen": f"unix:{path}"}):
            pass
    assert path.read_text() == "not a socket"


async def test_stop_leaves_a_socket_that_replaced_ours(make_sidecar: SidecarFactory, socket_dir: Path) -> None:
    path = socket_dir / "http.sock"
    async with make_sidecar(http_listen=f"unix:{path}"):
        path.unlink()
        stale_socket(path)  # a newer process took the path over
        newer = os.lstat(path).st_ino
    assert os.lstat(path).st_ino == newer


def test_claim_needs_the_directory(socket_dir: Path) -> None:
    with pytest.raises(OSError, match="does not exist"):
        unix.claim(socket_dir / "missing" / "http.sock")


def test_listening_socket_is_secured_before_it_listens(socket_dir: Path) -> None:
    path = socket_dir / "s.sock"
    sock, made = unix.listening_socket(path, mode=0o600, group=None)
    try:
        assert mode_of(path) == 0o600
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
    finally:
        sock.close()
    assert made.remove()
    assert not path.exists()
    assert not made.remove()
