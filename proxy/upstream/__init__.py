"""The transport to upstream hosts.

- `pool` and `connection`: the data path, a lean HTTP/1.1 client (asyncio Protocols over TLS, responses
  parsed by httptools) with one keep-alive pool per origin.
- `control`: control-plane calls (OAuth, endpoint metadata) over the same pools.
- `egress`: whether an upstream is reached through the egress proxy (HTTPS_PROXY, NO_PROXY), and the
  CONNECT tunnel the pools' connections then run in; the control plane applies the same decision.
- `build_ssl_context`: the one TLS context both use.

This package knows nothing about tokens (callers hand it complete requests) and never imports
`proxy.credentials`; its library exceptions are translated into `proxy.errors` at its edge.
"""

from __future__ import annotations

import ssl
from pathlib import Path


def build_ssl_context(ca_bundle: Path | None = None) -> ssl.SSLContext:
    """The one TLS context for all upstreams: system CAs plus `ca_bundle`. Costs ~20 ms; build once."""
    context = ssl.create_default_context()
    if ca_bundle is not None:
        context.load_verify_locations(cafile=str(ca_bundle))
    return context
