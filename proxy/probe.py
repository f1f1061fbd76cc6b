"""Waiting from outside for a sidecar to be ready (`serving-sidecar wait`): polls the admin listener's /readyz.

For scripts and for Jobs whose sidecar is an ordinary container: `serving-sidecar wait && do-work`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from proxy.config import Address

POLL_INTERVAL = 0.25  # seconds between two probes
PROBE_TIMEOUT = 2.0  # seconds one probe may take


@dataclass(frozen=True)
class Outcome:
    ready: bool
    detail: str  # the last /readyz reason, or why it could not be read


def probe_address(listen: Address) -> Address:
    """Where to reach a listener bound to `listen`: an unspecified address (0.0.0.0, ::) is reached on loopback."""
    try:
        unspecified = ipaddress.ip_address(listen.host).is_unspecified
    except ValueError:
        return listen
    if not unspecified:
        return listen
    return Address("::1" if ":" in listen.host else "127.0.0.1", listen.port)


def readyz_url(listen: Address) -> str:
    return f"http://{probe_address(listen)}/readyz"


async def wait_ready(
    listen: Address, seconds: float, *, interval: float = POLL_INTERVAL, clock: Callable[[], float] = time.monotonic
) -> Outcome:
    """Poll /readyz until it answers 200 (ready) or `seconds` have passed (not ready, with the last reason).

    Not `asyncio.timeout`: on timeout the caller gets the last reason /readyz gave, not a cancellation."""
    url, deadline = readyz_url(listen), clock() + seconds
    detail = "no answer yet"
    async with aiohttp.ClientSession() as session:
        while True:
            left = deadline - clock()
            ready, detail = await _probe(session, url, min(PROBE_TIMEOUT, max(left, 0.05)))
            if ready or clock() >= deadline:
                return Outcome(ready, detail)
            await asyncio.sleep(min(interval, max(0.0, deadline - clock())))


async def _probe(session: aiohttp.ClientSession, url: str, seconds: float) -> tuple[bool, str]:
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=seconds)) as response:
            text = await response.text()
            return response.status == 200, _reason(response.status, text)
    except (aiohttp.ClientError, TimeoutError) as error:
        return False, f"{url}: {type(error).__name__}: {error}".rstrip(": ")


def _reason(status: int, text: str) -> str:
    try:
        reason = json.loads(text).get("reason")
    except (ValueError, AttributeError):
        reason = None
    return f"{status} {reason or text.strip()[:200]}"
