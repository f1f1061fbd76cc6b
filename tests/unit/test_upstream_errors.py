"""Translation of aiohttp failures at the upstream edge."""

import time

import aiohttp
import pytest

from proxy.errors import ConnectFailed, StaleConnection, UpstreamTimeout, UpstreamUnreachable
from proxy.upstream import STALE_WINDOW, _Attempt, translate_errors

URL = "https://h.example:443/1/serving-endpoints/e/invocations"


def test_a_connect_timeout_is_a_connect_failure_not_a_504() -> None:
    with pytest.raises(ConnectFailed), translate_errors(URL):
        raise aiohttp.ConnectionTimeoutError("handshake")


def test_a_read_timeout_is_a_504() -> None:
    with pytest.raises(UpstreamTimeout), translate_errors(URL):
        raise aiohttp.SocketTimeoutError("read")


def test_only_a_quick_reset_on_a_reused_connection_is_stale() -> None:
    with pytest.raises(StaleConnection), translate_errors(URL, _Attempt(reused=True)):
        raise aiohttp.ServerDisconnectedError()
    late = _Attempt(reused=True, started=time.perf_counter() - STALE_WINDOW - 1)
    with pytest.raises(UpstreamUnreachable) as caught, translate_errors(URL, late):
        raise aiohttp.ServerDisconnectedError()  # the model may have run: not retried
    assert not isinstance(caught.value, StaleConnection)
    with pytest.raises(UpstreamUnreachable) as caught, translate_errors(URL, _Attempt(reused=False)):
        raise aiohttp.ClientOSError(104, "reset")
    assert not isinstance(caught.value, StaleConnection)
