"""The surface's interface, independent of any HTTP server: a request in, a local answer or a Forward out.

A front builds a `LocalRequest` for every request that is not an invocation route, with its body read
(at most MAX_BODY_BYTES), and acts on what `Surface.answer` returns:
- `LocalAnswer`: send it as it is (plus the request id header the front adds to every answer);
- `Forward`: send the request's body through the normal forwarding path to that endpoint, exactly as
  for `POST /serving-endpoints/{endpoint}[/served-models/{served_model}]/invocations`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from proxy.errors import SidecarError

Headers = tuple[tuple[str, str], ...]
JSON = "application/json"
# A Host header: a name or IPv4 address, or a bracketed IPv6 address, with an optional port.
_HOST = re.compile(r"(?:[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?")


@dataclass(frozen=True)
class LocalRequest:
    method: str
    raw_path: str  # as received: still percent-encoded, query string included
    headers: Headers = ()
    body: bytes = b""

    @property
    def path(self) -> str:
        """The path without its query string."""
        return self.raw_path.split("?", 1)[0]

    def header(self, name: str) -> str | None:
        """The first value of header `name` (case-insensitive), or None."""
        wanted = name.lower()
        return next((value for key, value in self.headers if key.lower() == wanted), None)

    def origin(self) -> str | None:
        """`http://<Host>`: how this caller reaches the sidecar, for URLs handed back to it; None if
        the Host header is missing or not a plain host[:port]."""
        host = self.header("Host")
        if host is None or not _HOST.fullmatch(host):
            return None
        return f"http://{host}"


@dataclass(frozen=True)
class LocalAnswer:
    status: int
    headers: Headers
    body: bytes


@dataclass(frozen=True)
class Forward:
    """Send the request body, unchanged, to this endpoint's invocation URL (tokens, pools, retries, metrics)."""

    endpoint: str
    served_model: str | None = None


def json_answer(doc: Any, *, status: int = 200, headers: Headers = ()) -> LocalAnswer:
    return LocalAnswer(status, (("Content-Type", JSON), *headers), json.dumps(doc).encode())


def error_answer(error: SidecarError) -> LocalAnswer:
    """The Databricks-shaped answer to an error the sidecar makes."""
    return LocalAnswer(error.status, tuple(error.headers().items()), error.body())
