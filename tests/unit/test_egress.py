"""The egress-proxy decision (NO_PROXY as curl and requests read it) and the CONNECT exchange, without sockets."""

from __future__ import annotations

import base64

import pytest

from proxy.config import EgressProxy
from proxy.upstream.egress import TunnelFailed, answer_status, bypasses, connect_request, proxy_for, refusal

PROXY = EgressProxy("proxy.corp", 3128, "Basic dTpw", ("internal.example", ".corp.example:8443", "10.0.0.0/8"))


@pytest.mark.parametrize(
    ("host", "port", "no_proxy", "bypassed"),
    [
        # exact names and domain suffixes: with or without a leading dot or *., the name and its subdomains
        ("example.com", 443, "example.com", True),
        ("api.example.com", 443, "example.com", True),
        ("a.b.example.com", 443, ".example.com", True),
        ("example.com", 443, ".example.com", True),
        ("api.example.com", 443, "*.example.com", True),
        ("notexample.com", 443, "example.com", False),
        ("example.com.evil", 443, "example.com", False),
        ("com", 443, "example.com", False),
        # case, whitespace, empty entries and trailing dots do not matter
        ("API.Example.COM.", 443, " , EXAMPLE.com. ,", True),
        # * alone is every host; elsewhere it is not a wildcard
        ("anything.at.all", 443, "*", True),
        ("127.0.0.1", 443, "other.example,*", True),
        ("example.com", 443, "ex*.com", False),
        # ports: an entry with a port matches that port only
        ("example.com", 8443, "example.com:8443", True),
        ("example.com", 443, "example.com:8443", False),
        ("api.example.com", 443, ".example.com:443", True),
        ("example.com", 443, "example.com:notaport", False),
        # IP addresses and CIDR ranges, IPv4 and IPv6, with and without brackets and ports
        ("10.1.2.3", 443, "10.0.0.0/8", True),
        ("11.1.2.3", 443, "10.0.0.0/8", False),
        ("10.1.2.3", 443, "10.1.2.3", True),
        ("::1", 443, "::1", True),
        ("[::1]", 443, "[::1]:443", True),
        ("::1", 8443, "[::1]:443", False),
        ("fd00::5", 443, "fd00::/8", True),
        ("10.1.2.3", 443, "::/0", False),
        # an address never matches a name by suffix, nor a name an address
        ("127.0.0.1", 443, "0.0.1", False),
        ("10.example.com", 443, "10.0.0.0/8", False),
        # loopback is not bypassed unless listed
        ("127.0.0.1", 443, "", False),
        ("localhost", 443, "example.com", False),
        ("127.0.0.1", 443, "localhost", False),
        ("127.0.0.1", 443, "127.0.0.1", True),
        ("127.0.0.2", 443, "127.0.0.0/8", True),
    ],
)
def test_no_proxy_matching(host: str, port: int, no_proxy: str, bypassed: bool) -> None:
    assert bypasses(host, port, no_proxy.split(",")) is bypassed


def test_proxy_for_an_upstream_url() -> None:
    assert proxy_for("https://ep-1.serving.cloud.databricks.com/x/invocations", PROXY) is PROXY
    assert proxy_for("https://internal.example/api", PROXY) is None
    assert proxy_for("https://db.internal.example:443/api", PROXY) is None
    assert proxy_for("https://a.corp.example:8443/", PROXY) is None
    assert proxy_for("https://a.corp.example/", PROXY) is PROXY  # port 443 is not 8443
    assert proxy_for("https://10.2.3.4/", PROXY) is None
    assert proxy_for("https://[2001:db8::1]:8443/", PROXY) is PROXY
    assert proxy_for("http://plain.example.com/", PROXY) is None  # HTTPS_PROXY is for https:// upstreams
    assert proxy_for("https://anything.example/", None) is None


def test_connect_request() -> None:
    assert connect_request("ep.serving.example", 443, None) == (
        b"CONNECT ep.serving.example:443 HTTP/1.1\r\nHost: ep.serving.example:443\r\n\r\n"
    )
    assert connect_request("2001:db8::1", 8443, "Basic dTpw") == (
        b"CONNECT [2001:db8::1]:8443 HTTP/1.1\r\nHost: [2001:db8::1]:8443\r\nProxy-Authorization: Basic dTpw\r\n\r\n"
    )
    for bad in ("evil.example\r\nX-Injected: 1", "a b", "a/b", ""):
        with pytest.raises(TunnelFailed, match="not a host name"):
            connect_request(bad, 443, None)


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"HTTP/1.1 200 Connection established\r\n\r\n", 200),
        (b"HTTP/1.0 200\r\n\r\n", 200),
        (b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\n\r\n", 407),
        (b"HTTP/2 200\r\n\r\n", None),
        (b"HTTP/1.1 20 OK\r\n\r\n", None),
        (b"HTTP/1.1 2000 OK\r\n\r\n", None),
        (b"SSH-2.0-OpenSSH\r\n\r\n", None),
        (b"\r\n\r\n", None),
    ],
)
def test_answer_status(head: bytes, status: int | None) -> None:
    assert answer_status(head) == status


def test_refusals_name_the_proxy_and_the_status_never_the_credentials() -> None:
    proxy = EgressProxy("proxy.corp", 3128, "Basic " + base64.b64encode(b"ops:hunter22").decode())
    message = refusal(proxy, 407)
    assert message == (
        "proxy http://proxy.corp:3128 refused the tunnel: 407 Proxy Authentication Required "
        "(check the user and password in the proxy URL)"
    )
    assert refusal(proxy, 403) == "proxy http://proxy.corp:3128 refused the tunnel: 403 Forbidden"
    assert refusal(proxy, 599) == "proxy http://proxy.corp:3128 refused the tunnel: 599"
    for text in (message, repr(proxy), str(proxy)):
        assert "hunter22" not in text and "b3BzOmh1bnRlcjIy" not in text
