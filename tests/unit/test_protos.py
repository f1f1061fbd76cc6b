"""The committed stubs under proxy/_proto are what scripts/gen-protos makes from protos/ today."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]
COMMITTED = ROOT / "proxy" / "_proto"


def files(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): path.read_text()
        for path in sorted(root.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


def test_generated_stubs_are_fresh(tmp_path: Path) -> None:
    out = tmp_path / "_proto"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen-protos"), "--out", str(out)], check=True)
    fresh, committed = files(out), files(COMMITTED)
    assert sorted(fresh) == sorted(committed), "stub files differ: run `.venv/bin/python scripts/gen-protos`"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"stale stubs {stale}: run `.venv/bin/python scripts/gen-protos` and commit the result"


def test_stubs_import_inside_the_package() -> None:
    from proxy._proto.servingsidecar.v1 import serving_proxy_pb2, serving_proxy_pb2_grpc

    assert serving_proxy_pb2.DESCRIPTOR.name == "servingsidecar/v1/serving_proxy.proto"
    assert serving_proxy_pb2.DESCRIPTOR.services_by_name["ServingProxy"].full_name == "servingsidecar.v1.ServingProxy"
    assert hasattr(serving_proxy_pb2_grpc, "ServingProxyStub")


def test_contract_names_and_field_numbers_are_stable() -> None:
    from proxy._proto.servingsidecar.v1 import serving_proxy_pb2

    messages = serving_proxy_pb2.DESCRIPTOR.message_types_by_name
    fields = {name: {f.name: f.number for f in messages[name].fields} for name in messages}
    assert fields == {
        "InvokeRequest": {"endpoint": 1, "served_model": 2, "json_body": 3},
        "InvokeResponse": {"json_body": 1, "served_model_name": 2},
        "InvokeEvent": {"data": 1},
    }
    service = serving_proxy_pb2.DESCRIPTOR.services_by_name["ServingProxy"]
    shapes = {m.name: (m.input_type.name, m.output_type.name, m.server_streaming) for m in service.methods}
    assert shapes == {
        "Invoke": ("InvokeRequest", "InvokeResponse", False),
        "InvokeStream": ("InvokeRequest", "InvokeEvent", True),
    }
