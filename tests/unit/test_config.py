import base64
import grp
import os
from pathlib import Path

import pytest

from proxy.config import OPTIONS, EgressProxy, UnixAddress, load
from proxy.errors import ConfigError

BASE_ENV = {"DATABRICKS_HOST": "my.cloud.databricks.com", "DATABRICKS_CLIENT_ID": "sp", "DATABRICKS_CLIENT_SECRET": "s"}


def test_defaults_and_unified_auth_environment(tmp_path: Path) -> None:
    settings = load({}, environ=BASE_ENV, home=tmp_path)
    assert settings.host == "https://my.cloud.databricks.com"
    assert settings.token_url == "https://my.cloud.databricks.com/oidc/v1/token"
    assert str(settings.http_listen) == "127.0.0.1:8484"
    assert str(settings.grpc_listen) == "127.0.0.1:8485"
    assert str(settings.admin_listen) == "127.0.0.1:8486"
    assert settings.first_byte_timeout >= 297
    assert repr(settings).endswith("client_secret=<set>)")


def test_precedence_flag_then_env_then_file(tmp_path: Path) -> None:
    config_file = tmp_path / "c.yaml"
    config_file.write_text("http_listen: 127.0.0.1:1\nadmin-listen: 127.0.0.1:2\nendpoints: [a, b]\n")
    env = {**BASE_ENV, "SERVING_SIDECAR_ADMIN_LISTEN": "127.0.0.1:3"}
    settings = load({"config": str(config_file), "http_listen": "127.0.0.1:4"}, environ=env, home=tmp_path)
    assert settings.http_listen.port == 4
    assert settings.admin_listen.port == 3
    assert settings.endpoints == ("a", "b")


def test_profile_from_databrickscfg(tmp_path: Path) -> None:
    (tmp_path / ".databrickscfg").write_text("[sp]\nhost = https://ws.example.com\nclient_id = c\nclient_secret = z\n")
    settings = load({}, environ={"DATABRICKS_CONFIG_PROFILE": "sp"}, home=tmp_path)
    assert (settings.host, settings.client_id, settings.client_secret) == ("https://ws.example.com", "c", "z")


def test_personal_access_token_is_refused_with_an_explanation(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="OAuth tokens only"):
        load({}, environ={"DATABRICKS_HOST": "h.example.com", "DATABRICKS_TOKEN": "dapi123"}, home=tmp_path)


@pytest.mark.parametrize("key", ["http_listen", "grpc_listen"])
def test_remote_listen_needs_allow_remote_clients(tmp_path: Path, key: str) -> None:
    with pytest.raises(ConfigError, match="allow-remote-clients"):
        load({key: "0.0.0.0:8484"}, environ=BASE_ENV, home=tmp_path)
    settings = load({key: "0.0.0.0:8484", "allow_remote_clients": True}, environ=BASE_ENV, home=tmp_path)
    assert not getattr(settings, key).is_loopback


def test_admin_may_listen_remotely(tmp_path: Path) -> None:
    assert load({"admin_listen": "0.0.0.0:8486"}, environ=BASE_ENV, home=tmp_path).admin_listen.host == "0.0.0.0"


@pytest.mark.parametrize(
    ("flags", "env", "message"),
    [
        ({}, {"DATABRICKS_CLIENT_ID": "x", "DATABRICKS_CLIENT_SECRET": "s"}, "host"),
        ({"http_listen": "nonsense"}, BASE_ENV, "http-listen"),
        ({}, {**BASE_ENV, "SERVING_SIDECAR_POOL_SIZE": "many"}, "SERVING_SIDECAR_POOL_SIZE"),
        ({"ca_bundle": "/does/not/exist"}, BASE_ENV, "ca-bundle"),
        ({}, {"DATABRICKS_HOST": "h", "DATABRICKS_CLIENT_ID": "x"}, "client secret"),
        ({"auth": "workload-identity"}, {"DATABRICKS_HOST": "h", "DATABRICKS_CLIENT_ID": "x"}, "token-file"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, flags: dict[str, str], env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(flags, environ=env, home=tmp_path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("a: [unclosed", "not valid YAML"),
        ("- a\n- b\n", "mapping"),
        ("bogus: 1\n", "unknown key"),
        ("client_secret: x\n", "never in the config file"),
    ],
)
def test_malformed_config_file(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load({"config": str(path)}, environ=BASE_ENV, home=tmp_path)


def test_every_option_has_help_and_an_env_name() -> None:
    for opt in OPTIONS:
        assert opt.help and opt.env_name.isupper()


def test_operations_options_defaults_and_overrides(tmp_path: Path) -> None:
    settings = load({}, environ=BASE_ENV, home=tmp_path)
    assert (settings.drain_delay, settings.drain_timeout) == (5.0, 30.0)
    assert (settings.log_format, settings.log_level, settings.access_log) == ("text", "info", False)
    env = {
        **BASE_ENV,
        "SERVING_SIDECAR_DRAIN_DELAY": "0",
        "SERVING_SIDECAR_LOG_FORMAT": "json",
        "SERVING_SIDECAR_ACCESS_LOG": "true",
    }
    settings = load({"log_level": "debug", "drain_timeout": 2.5}, environ=env, home=tmp_path)
    assert (settings.drain_delay, settings.drain_timeout) == (0.0, 2.5)
    assert (settings.log_format, settings.log_level, settings.access_log) == ("json", "debug", True)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SERVING_SIDECAR_LOG_FORMAT": "xml"}, "SERVING_SIDECAR_LOG_FORMAT: must be one of text, json"),
        ({"SERVING_SIDECAR_LOG_LEVEL": "loud"}, "must be one of debug, info, warning, error"),
        ({"SERVING_SIDECAR_DRAIN_TIMEOUT": "-1"}, "SERVING_SIDECAR_DRAIN_TIMEOUT: must be zero or more"),
    ],
)
def test_operations_options_are_validated(tmp_path: Path, env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load({}, environ={**BASE_ENV, **env}, home=tmp_path)


def test_workers_default_to_one_and_take_a_number_or_auto(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load({}, environ=BASE_ENV, home=tmp_path).workers == 1
    assert load({"workers": "3"}, environ=BASE_ENV, home=tmp_path).workers == 3
    config_file = tmp_path / "c.yaml"
    config_file.write_text("workers: 2\n")  # a YAML integer
    assert load({"config": str(config_file)}, environ=BASE_ENV, home=tmp_path).workers == 2
    monkeypatch.setattr("proxy.config.usable_cpus", lambda: 6)
    assert load({}, environ={**BASE_ENV, "SERVING_SIDECAR_WORKERS": "auto"}, home=tmp_path).workers == 6


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5", "65"])
def test_workers_refuse_anything_else_naming_the_key(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match=r"workers: expected auto or a whole number from 1 to 64"):
        load({"workers": value}, environ=BASE_ENV, home=tmp_path)


def test_egress_proxy_from_the_standard_environment(tmp_path: Path) -> None:
    env = {
        **BASE_ENV,
        "HTTPS_PROXY": "http://ops:p%40ss%20word@proxy.corp:3128/",
        "NO_PROXY": " a.example, .b.example ",
    }
    proxy = load({}, environ=env, home=tmp_path).egress_proxy
    assert proxy is not None
    assert (proxy.host, proxy.port, proxy.no_proxy) == ("proxy.corp", 3128, ("a.example", ".b.example"))
    assert proxy.authorization == "Basic " + base64.b64encode(b"ops:p@ss word").decode()
    assert str(proxy) == "http://proxy.corp:3128"
    assert "p@ss" not in repr(proxy) and "authorization" not in repr(proxy)
    # lower case first, as curl and Python read them; no scheme means http://, no port means 80
    env = {**BASE_ENV, "HTTPS_PROXY": "http://upper:1", "https_proxy": "lower.corp", "no_proxy": "x", "NO_PROXY": "y"}
    proxy = load({}, environ=env, home=tmp_path).egress_proxy
    assert proxy == EgressProxy("lower.corp", 80, None, ("x",))
    assert load({}, environ={**BASE_ENV, "https_proxy": " ", "HTTPS_PROXY": "[::1]:3128"}, home=tmp_path).egress_proxy
    assert load({}, environ={**BASE_ENV, "NO_PROXY": "*"}, home=tmp_path).egress_proxy is None
    assert load({}, environ={**BASE_ENV, "HTTP_PROXY": "http://p:1"}, home=tmp_path).egress_proxy is None


def test_egress_proxy_off_ignores_the_environment(tmp_path: Path) -> None:
    env = {**BASE_ENV, "HTTPS_PROXY": "http://proxy.corp:3128"}
    assert load({"egress_proxy": "off"}, environ=env, home=tmp_path).egress_proxy is None
    assert load({}, environ={**env, "SERVING_SIDECAR_EGRESS_PROXY": "off"}, home=tmp_path).egress_proxy is None
    config_file = tmp_path / "c.yaml"
    config_file.write_text("egress_proxy: off\n")  # YAML reads an unquoted off as false
    assert load({"config": str(config_file)}, environ=env, home=tmp_path).egress_proxy is None
    config_file.write_text("egress_proxy: on\n")
    with pytest.raises(ConfigError, match="egress_proxy \\(config file\\): must be one of auto, off, got 'on'"):
        load({"config": str(config_file)}, environ=env, home=tmp_path)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("https://ops:hunter22@proxy.corp:3128", "an https:// proxy (TLS to the proxy itself) is not supported"),
        ("socks5://ops:hunter22@proxy.corp:1080", "expected an http://HOST:PORT proxy URL"),
        ("http://ops:hunter22@proxy.corp:99999", "the proxy URL is malformed"),
        ("http://ops:hunter22@[::1:3128", "the proxy URL is malformed"),
        ("http://ops:hunter22@:3128", "expected an http://HOST:PORT proxy URL"),
    ],
)
def test_a_bad_proxy_url_is_a_config_error_without_the_password(tmp_path: Path, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        load({}, environ={**BASE_ENV, "https_proxy": value}, home=tmp_path)
    assert str(error.value).startswith("https_proxy: ") and message in str(error.value)
    assert "hunter22" not in str(error.value)


@pytest.mark.parametrize("key", ["http_listen", "grpc_listen"])
@pytest.mark.parametrize("value", ["unix:/run/serving-sidecar/x.sock", "unix:///run/serving-sidecar/x.sock"])
def test_unix_socket_listeners_are_local_by_nature(tmp_path: Path, key: str, value: str) -> None:
    settings = load({key: value}, environ=BASE_ENV, home=tmp_path)  # no --allow-remote-clients needed
    address = getattr(settings, key)
    assert isinstance(address, UnixAddress)
    assert address.path == Path("/run/serving-sidecar/x.sock")
    assert str(address) == "unix:/run/serving-sidecar/x.sock"
    assert address.is_loopback
    assert (settings.socket_mode, settings.socket_group) == (0o660, None)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"http_listen": "unix:relative.sock"}, "http-listen: expected unix:/ABSOLUTE/PATH"),
        ({"grpc_listen": "unix:"}, "grpc-listen: expected unix:/ABSOLUTE/PATH"),
        ({"http_listen": "unix:/" + "x" * 120}, "longer than 107 bytes"),
        ({"admin_listen": "unix:/run/a.sock"}, "admin-listen: needs HOST:PORT"),
        ({"http_listen": "unix:/run/s.sock", "grpc_listen": "unix:/run/s.sock"}, "also the HTTP listener's socket"),
        ({"socket_mode": "0999"}, "socket-mode: expected an octal mode"),
        ({"socket_mode": "01777"}, "socket-mode: expected an octal mode"),
        ({"socket_group": "no-such-group-here"}, "socket-group: no group named"),
    ],
)
def test_unix_socket_settings_are_validated(tmp_path: Path, flags: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(flags, environ=BASE_ENV, home=tmp_path)


def test_socket_mode_and_group_spellings(tmp_path: Path) -> None:
    group = grp.getgrgid(os.getgid())
    assert load({"socket_mode": "600"}, environ=BASE_ENV, home=tmp_path).socket_mode == 0o600
    env = {**BASE_ENV, "SERVING_SIDECAR_SOCKET_MODE": "0o640", "SERVING_SIDECAR_SOCKET_GROUP": group.gr_name}
    settings = load({}, environ=env, home=tmp_path)
    assert (settings.socket_mode, settings.socket_group) == (0o640, group.gr_gid)
    assert load({"socket_group": "4321"}, environ=BASE_ENV, home=tmp_path).socket_group == 4321
    config_file = tmp_path / "c.yaml"
    config_file.write_text("socket_mode: 0660\n")  # YAML 1.1 reads a leading 0 as octal: the number 432
    assert load({"config": str(config_file)}, environ=BASE_ENV, home=tmp_path).socket_mode == 0o660
    config_file.write_text("socket_mode: 660\n")  # decimal 660 is no mode: refused, not misread
    with pytest.raises(ConfigError, match="socket_mode"):
        load({"config": str(config_file)}, environ=BASE_ENV, home=tmp_path)
