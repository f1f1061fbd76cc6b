"""Settings and the YAML loader (pure apart from reading one temp file)."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.emulator import EmulatorSettings, EndpointSpec, SettingsError, default_endpoints, load_settings


def test_default_endpoints() -> None:
    specs = {s.name: s for s in default_endpoints()}
    assert list(specs) == ["fraud-ro", "features-ro", "chat-ro", "embed-ro", "plain-model"]
    assert [specs[n].kind for n in specs] == ["custom", "feature", "chat", "embeddings", "custom"]
    assert specs["plain-model"].route_optimized is False
    assert specs["fraud-ro"].served_models == ("fraud-ro-1",)


def test_endpoint_spec_validation() -> None:
    with pytest.raises(SettingsError):
        EndpointSpec("bad name", "custom")
    with pytest.raises(SettingsError):
        EndpointSpec("x", "sql")  # type: ignore[arg-type]
    with pytest.raises(SettingsError):
        EndpointSpec("x", "custom", latency=-1)
    with pytest.raises(SettingsError, match="duplicate"):
        EmulatorSettings(endpoints=[EndpointSpec("x", "custom"), EndpointSpec("x", "chat")])
    with pytest.raises(SettingsError, match="workspace_id"):
        EmulatorSettings(workspace_id="abc")


def test_yaml_config(tmp_path: Path) -> None:
    path = tmp_path / "emulator.yaml"
    path.write_text(
        """
workspace_id: 1234
clients: {app: s3cret}
dp_token_ttl: 600
endpoints:
  - {name: m, kind: custom, served_models: [m-a, m-b], latency: 0.5, allowed_clients: [app]}
  - {name: c, kind: chat, route_optimized: false, stream_interval: 0.01}
federation:
  - {issuer: "https://k8s", subject: "system:serviceaccount:ns:sa", audience: "aud", client_id: app}
faults: {token_latency: 0.1, close_after_requests: 5}
"""
    )
    settings = load_settings(path)
    assert settings.workspace_id == "1234"
    assert settings.clients == {"app": "s3cret"}
    assert settings.dp_token_ttl == 600
    assert settings.endpoints[0] == EndpointSpec(
        "m", "custom", served_models=("m-a", "m-b"), latency=0.5, allowed_clients=("app",)
    )
    assert settings.endpoints[1].route_optimized is False
    assert settings.federation[0].audience == "aud"
    assert (settings.faults.token_latency, settings.faults.close_after_requests) == (0.1, 5)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("endpoints: [{name: x", "not valid YAML"),
        ("- 1\n- 2\n", "mapping"),
        ("colour: red\n", "unknown key 'colour'"),
        ("endpoints: {name: x}\n", "endpoints must be a list"),
        ("endpoints:\n  - {name: x}\n", "'name' and 'kind' are required"),
        ("endpoints:\n  - {name: x, kind: custom, speed: 3}\n", "unknown key 'speed'"),
        ("cp_token_ttl: soon\n", "cp_token_ttl must be a number"),
        ("faults: {token_outage: maybe}\n", "faults: token_outage"),
        ("federation:\n  - {issuer: null}\n", "federation[0].issuer"),
        ("control_port: true\n", "control_port"),
    ],
)
def test_bad_yaml_is_one_clear_line(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SettingsError) as err:
        load_settings(path)
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot read"):
        load_settings(tmp_path / "nope.yaml")
