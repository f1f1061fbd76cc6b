"""What crosses the parent-worker channel: settings without the secret, resolutions, tokens, errors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import trustme

from proxy import errors
from proxy.config import load
from proxy.endpoints import Resolution
from proxy.workers import wire

ENV = {"DATABRICKS_HOST": "w.example.com", "DATABRICKS_CLIENT_ID": "sp", "DATABRICKS_CLIENT_SECRET": "s3cret-value"}


def over_the_wire(doc: object) -> object:
    return json.loads(json.dumps(doc))


def test_settings_travel_whole_except_the_client_secret(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca))
    env = {**ENV, "HTTPS_PROXY": "http://ops:pw@proxy.corp:3128", "NO_PROXY": "a.example"}
    flags = {"ca_bundle": str(ca), "endpoint": ["a", "b"], "workers": "2", "drain_delay": 0.5}
    settings = load(flags, environ=env, home=tmp_path)
    doc = over_the_wire(wire.settings_to_wire(settings))
    assert "s3cret-value" not in json.dumps(doc)
    back = wire.settings_from_wire(doc)
    assert back.client_secret is None
    assert back == dataclasses.replace(settings, client_secret=None)
    assert back.ca_bundle == ca and back.endpoints == ("a", "b") and back.http_listen == settings.http_listen
    assert back.egress_proxy == settings.egress_proxy and back.egress_proxy is not None  # workers tunnel too
    assert back.egress_proxy.no_proxy == ("a.example",)


def test_resolutions_round_trip_and_bad_ones_are_refused() -> None:
    resolution = Resolution("fraud-ro", "id-1", "https://h/x/invocations", '[{"type":"t"}]', True, "READY")
    assert wire.resolution_from_wire(over_the_wire(wire.resolution_to_wire(resolution))) == resolution
    plain = Resolution("plain", "id-2", "https://w/serving-endpoints/plain/invocations", None, False)
    assert wire.resolution_from_wire(over_the_wire(wire.resolution_to_wire(plain))) == plain
    with pytest.raises(ValueError, match="url must be a string"):
        wire.resolution_from_wire({**wire.resolution_to_wire(plain), "url": 3})


def test_tokens_and_their_keys() -> None:
    assert wire.token_from_wire(over_the_wire(wire.token_to_wire("tok", 12.5))) == ("tok", 12.5)
    assert wire.key_from_wire(wire.key_to_wire("https://h/x", None)) is None  # the workspace token
    assert wire.key_from_wire(wire.key_to_wire("https://h/x", "[]")) == ("https://h/x", "[]")
    with pytest.raises(ValueError, match="expires_at"):
        wire.token_from_wire({"access_token": "tok"})


@pytest.mark.parametrize(
    "error",
    [
        errors.EndpointNotFound("no such endpoint"),
        errors.NoCredential("token server down", retry_after=7),
        errors.UpstreamUnreachable("workspace answered 500"),
        errors.WorkspaceRefused(403, "PERMISSION_DENIED", "not yours"),
        errors.SidecarError("internal"),
    ],
)
def test_errors_keep_their_type_status_and_retry_after(error: errors.SidecarError) -> None:
    back = wire.error_from_wire(over_the_wire(wire.error_to_wire(error)))
    assert type(back) is type(error)
    assert (back.status, back.error_code, back.message, back.retry_after) == (
        error.status,
        error.error_code,
        error.message,
        error.retry_after,
    )


def test_an_unknown_error_type_arrives_as_a_plain_sidecar_error() -> None:
    back = wire.error_from_wire({"type": "KeyError", "message": "m"})
    assert type(back) is errors.SidecarError and back.message == "m"
