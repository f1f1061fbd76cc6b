"""Translation of aiohttp failures at the control plane's edge."""

import aiohttp
import pytest

from proxy.errors import ConnectFailed, UpstreamTimeout, UpstreamUnreachable
from proxy.upstream.control import translate_errors

URL = "https://h.example:443/1/serving-endpoints/e/invocations"


def test_a_connect_timeout_is_a_connect_failure_not_a_504() -> None:
    with pytest.raises(ConnectFailed), translate_errors(URL):
        raise aiohttp.ConnectionTimeoutError("handshake")


def test_a_read_timeout_is_a_504() -> None:
    with pytest.raises(UpstreamTimeout), translate_errors(URL):
        raise aiohttp.SocketTimeoutError("read")


def test_a_dropped_connection_is_a_502() -> None:
    with pytest.raises(UpstreamUnreachable), translate_errors(URL):
        raise aiohttp.ServerDisconnectedError()
