"""Which token may go where (pure): the workspace token (scope all-apis) only to the workspace's own origin;
a data-plane token only over https, to the URL it was minted for. Anything else is refused.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from proxy.errors import BadMetadata


def _origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port with the scheme's default filled in); BadMetadata for user info or a bad port."""
    parts = urlsplit(url)
    try:
        port = parts.port or {"https": 443, "http": 80}.get(parts.scheme)
    except ValueError:
        raise BadMetadata("refusing to send a token to a URL with an invalid port") from None
    if parts.username is not None or parts.password is not None:
        raise BadMetadata(f"refusing to send a token to {parts.scheme}://{parts.hostname}: the URL carries user info")
    return (parts.scheme, parts.hostname or "", port)


def token_kind(url: str, authorization_details: str | None, workspace_url: str) -> Literal["workspace", "data_plane"]:
    """Which token may be sent to `url`: the workspace token only to the workspace's origin (without
    authorization details), a data-plane token only to an https URL. Raises BadMetadata (502) otherwise."""
    scheme, host, port = _origin(url)
    shown = f"{scheme}://{host}:{port}"
    if authorization_details is None:
        if (scheme, host, port) != _origin(workspace_url):
            raise BadMetadata(f"refusing to send the workspace token to {shown}: it goes only to the workspace")
        return "workspace"
    if scheme != "https" or not host:
        raise BadMetadata(f"refusing to send a data-plane token to {shown}: tokens travel only over https")
    return "data_plane"
