"""TLS material: one trustme CA and one server certificate for 127.0.0.1, ::1 and localhost.

The server ``SSLContext`` is built once and shared by every listener (control plane and all
data-plane ports); it speaks HTTP/1.1 only (ALPN ``http/1.1``).
"""

from __future__ import annotations

import ssl
from pathlib import Path

import trustme


class Tls:
    """A private CA and the emulator's server context."""

    def __init__(self, *hostnames: str) -> None:
        names = tuple(dict.fromkeys(("127.0.0.1", "::1", "localhost", *hostnames)))
        self._ca = trustme.CA(organization_name="serving-sidecar emulator")
        self._cert = self._ca.issue_cert(*names)
        self.server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._cert.configure_cert(self.server_context)
        self.server_context.set_alpn_protocols(["http/1.1"])
        self.ca_pem: bytes = self._ca.cert_pem.bytes()

    def __repr__(self) -> str:
        return "Tls(ca='serving-sidecar emulator')"

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts only this CA (for tests and tools)."""
        context = ssl.create_default_context(cadata=self.ca_pem.decode())
        return context

    def write_ca(self, path: Path) -> None:
        """Write the CA certificate (PEM) to ``path``, creating parent directories."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.ca_pem)
