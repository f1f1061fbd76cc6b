"""Configuration errors: the workspace scheme, numbers, endpoint names and files, each naming its option,
one line, never quoting a secret."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from proxy.config import MAX_NUMBER, OPTIONS, load
from proxy.errors import ConfigError

SECRET = "s3cr3t-value-never-shown"
ENV = {"DATABRICKS_HOST": "ws.example.com", "DATABRICKS_CLIENT_ID": "sp", "DATABRICKS_CLIENT_SECRET": SECRET}
FLOATS = [opt for opt in OPTIONS if opt.kind == "float"]
INTS = [opt for opt in OPTIONS if opt.kind == "int"]
PATH_TRICK = "../../../api/2.0/preview/scim/v2/Me#"


def refused(tmp_path: Path, flags: dict[str, Any] | None = None, **env: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load(flags or {}, environ={**ENV, **env}, home=tmp_path)
    message = str(caught.value)
    assert "\n" not in message and SECRET not in message
    return message


# --- the workspace URL ----------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["http://127.0.0.1:8080", "http://ws.example.com", "HTTP://localhost"])
def test_a_plain_http_workspace_is_refused_without_the_option(tmp_path: Path, host: str) -> None:
    message = refused(tmp_path, DATABRICKS_HOST=host)
    assert message.startswith("host:") and "https://" in message and "--allow-insecure-loopback-host" in message


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("http://127.8.9.10", "http://127.8.9.10"),
        ("http://localhost:1", "http://localhost:1"),
        ("http://[::1]:9", "http://[::1]:9"),
    ],
)
def test_the_option_accepts_plain_http_on_loopback_only(tmp_path: Path, host: str, expected: str) -> None:
    settings = load({"allow_insecure_loopback_host": True}, environ={**ENV, "DATABRICKS_HOST": host}, home=tmp_path)
    assert settings.host == expected and settings.insecure_host


@pytest.mark.parametrize("host", ["http://ws.example.com", "http://10.0.0.1:80", "http://[::2]"])
def test_the_option_does_not_open_plain_http_to_other_hosts(tmp_path: Path, host: str) -> None:
    message = refused(tmp_path, {"allow_insecure_loopback_host": True}, DATABRICKS_HOST=host)
    assert message.startswith("host:") and "only for a loopback host" in message


def test_https_is_unaffected_by_the_option(tmp_path: Path) -> None:
    settings = load({"allow_insecure_loopback_host": True}, environ=ENV, home=tmp_path)
    assert settings.host == "https://ws.example.com" and not settings.insecure_host


# --- numbers --------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf", "-1", "1e400", str(MAX_NUMBER * 2)])
@pytest.mark.parametrize("opt", FLOATS, ids=lambda opt: opt.name)
def test_every_float_option_must_be_finite_and_not_negative(tmp_path: Path, opt: Any, bad: str) -> None:
    for message in (refused(tmp_path, {opt.key: bad}), refused(tmp_path, **{opt.env_name: bad})):
        assert opt.name in message or opt.env_name in message
        assert "finite" in message or "zero or more" in message or "at most" in message


@pytest.mark.parametrize("opt", FLOATS, ids=lambda opt: opt.name)
def test_float_options_refuse_nan_from_the_config_file_too(tmp_path: Path, opt: Any) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"{opt.key}: .nan\n")
    assert f"{opt.key} (config file): must be a finite number" in refused(tmp_path, {"config": str(path)})


@pytest.mark.parametrize("bad", ["1.9", "2.0", "true", "[1]", "-3"])
@pytest.mark.parametrize("opt", INTS, ids=lambda opt: opt.name)
def test_integer_options_take_integers_only(tmp_path: Path, opt: Any, bad: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"{opt.key}: {bad}\n")
    message = refused(tmp_path, {"config": str(path)})
    assert message.startswith(f"{opt.key} (config file):")
    assert "expected an integer" in message or "zero or more" in message


def test_pool_size_1_9_is_an_error_not_1(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("pool_size: 1.9\n")
    assert refused(tmp_path, {"config": str(path)}) == "pool_size (config file): expected an integer, got 1.9"
    assert "--pool-size: expected an integer" in refused(tmp_path, {"pool_size": "1.9"})
    assert load({"pool_size": "12"}, environ=ENV, home=tmp_path).pool_size == 12


def test_numbers_in_range_are_accepted(tmp_path: Path) -> None:
    settings = load({"drain_delay": "0", "retry_budget": 0, "warm_connections": "0"}, environ=ENV, home=tmp_path)
    assert (settings.drain_delay, settings.retry_budget, settings.warm_connections) == (0.0, 0.0, 0)


def test_a_long_bad_value_is_quoted_short(tmp_path: Path) -> None:
    message = refused(tmp_path, SERVING_SIDECAR_POOL_SIZE="9" * 5000 + "x")
    assert len(message) < 200 and message.endswith("...")


# --- endpoint names -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [PATH_TRICK, "a/b", "x" * 65, "fraud ro", "", "%2e%2e", "ä"])
@pytest.mark.parametrize("key", ["endpoint", "idempotent_endpoint"])
def test_endpoint_names_are_validated_like_routes(tmp_path: Path, key: str, name: str) -> None:
    if not name:  # an empty item in a comma-separated list is skipped; as a flag it is refused
        assert "not an endpoint name" in refused(tmp_path, {key: [name]})
        return
    message = refused(tmp_path, {key: [name]})
    assert message.startswith(key.replace("_", "-") + ":") and "letters, digits, - and _" in message


def test_valid_endpoint_names_pass(tmp_path: Path) -> None:
    settings = load({"endpoint": ["fraud-ro", "a_B-9", "x" * 64]}, environ=ENV, home=tmp_path)
    assert settings.endpoints == ("fraud-ro", "a_B-9", "x" * 64)


# --- files ----------------------------------------------------------------------------------------


def test_a_ca_bundle_that_is_not_pem_is_refused(tmp_path: Path) -> None:
    for content in (b"not a certificate\n", b"\x30\x82\x01\x0a\xff\xfe", b""):
        path = tmp_path / "ca.pem"
        path.write_bytes(content)
        message = refused(tmp_path, {"ca_bundle": str(path)})
        assert message == f"ca-bundle: {path}: not a PEM file of CA certificates"


@pytest.mark.parametrize(
    ("content", "problem"),
    [(b"\xff\xfe" + SECRET.encode("utf-16-le"), "is not UTF-8 text"), (b"  \n", "is empty")],
)
@pytest.mark.parametrize("key", ["client_secret_file", "token_file"])
def test_secret_and_token_files_must_be_utf8_text(tmp_path: Path, key: str, content: bytes, problem: str) -> None:
    path = tmp_path / "file"
    path.write_bytes(content)
    message = refused(tmp_path, {key: str(path), "auth": "workload-identity" if key == "token_file" else None})
    assert message == f"{key.replace('_', '-')}: {path} {problem}"


def test_yaml_errors_do_not_quote_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"host: ws.example.com\nnote: {SECRET}: bad\n")
    message = refused(tmp_path, {"config": str(path)})
    assert "not valid YAML" in message and "line 2" in message


def test_a_malformed_profile_is_named_without_its_lines(tmp_path: Path) -> None:
    (tmp_path / ".databrickscfg").write_text(f"[sp]\nhost = ws.example.com\nclient_secret {SECRET}\n")
    message = refused(tmp_path, DATABRICKS_CONFIG_PROFILE="sp")
    assert message.startswith("profile:") and "malformed" in message


def test_non_utf8_config_and_profile_files_are_configuration_errors(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(b"host: \xff\n")
    assert refused(tmp_path, {"config": str(path)}).endswith("is not UTF-8 text")
    (tmp_path / ".databrickscfg").write_bytes(b"[sp]\nhost = \xff\n")
    assert refused(tmp_path, DATABRICKS_CONFIG_PROFILE="sp").endswith("is not UTF-8 text")
