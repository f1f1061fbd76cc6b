"""What crosses the channel between the parent and a worker, as JSON: settings, resolutions, tokens, errors.

Pure functions, one pair per kind. Decoding checks types and raises ValueError on anything else: the
other side is our own process, but a bug there must fail loudly here rather than travel on.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

from proxy import errors
from proxy.config import Address, EgressProxy, ListenAddress, Settings, UnixAddress
from proxy.endpoints import Resolution

# Errors a worker may get back for a request it made; anything else arrives as a plain SidecarError.
_ERRORS: dict[str, type[errors.SidecarError]] = {
    cls.__name__: cls
    for cls in (
        errors.SidecarError,
        errors.EndpointNotFound,
        errors.UpstreamUnreachable,
        errors.ConnectFailed,
        errors.NoCredential,
        errors.UpstreamTimeout,
        errors.Overloaded,
        errors.InvalidRequest,
    )
}


def error_to_wire(error: errors.SidecarError) -> dict[str, Any]:
    return {
        "type": type(error).__name__,
        "message": error.message,
        "retry_after": error.retry_after,
        "status": error.status,
        "error_code": error.error_code,
    }


def error_from_wire(doc: Any) -> errors.SidecarError:
    message = str(doc.get("message", "")) if isinstance(doc, dict) else "malformed error from the other process"
    if not isinstance(doc, dict):
        return errors.SidecarError(message)
    if doc.get("type") == "WorkspaceRefused":
        return errors.WorkspaceRefused(int(doc["status"]), str(doc["error_code"]), message)
    retry_after = doc.get("retry_after")
    cls = _ERRORS.get(str(doc.get("type")), errors.SidecarError)
    return cls(message, retry_after=retry_after if isinstance(retry_after, int) else None)


def resolution_to_wire(resolution: Resolution) -> dict[str, Any]:
    return dataclasses.asdict(resolution)


def resolution_from_wire(doc: Any) -> Resolution:
    if not isinstance(doc, dict):
        raise ValueError(f"a resolution is a JSON object, not {doc!r}")
    details = doc.get("authorization_details")
    if details is not None and not isinstance(details, str):
        raise ValueError("authorization_details must be a string or null")
    return Resolution(
        name=_text(doc, "name"),
        endpoint_id=_text(doc, "endpoint_id"),
        url=_text(doc, "url"),
        authorization_details=details,
        route_optimized=bool(doc.get("route_optimized")),
        ready=_text(doc, "ready"),
    )


def token_to_wire(access_token: str, expires_at: float) -> dict[str, Any]:
    return {"access_token": access_token, "expires_at": expires_at}


def token_from_wire(doc: Any) -> tuple[str, float]:
    """(access token, expiry as Unix time)."""
    if not isinstance(doc, dict):
        raise ValueError("a token is a JSON object")
    expires_at = doc.get("expires_at")
    if not isinstance(expires_at, int | float):
        raise ValueError("a token needs a numeric expires_at")
    return _text(doc, "access_token"), float(expires_at)


def key_to_wire(url: str, authorization_details: str | None) -> dict[str, Any]:
    """Which credential: the workspace token (no authorization details) or a data-plane token."""
    if authorization_details is None:
        return {"url": None, "authorization_details": None}
    return {"url": url, "authorization_details": authorization_details}


def key_from_wire(doc: Any) -> tuple[str, str] | None:
    if not isinstance(doc, dict):
        raise ValueError("a token key is a JSON object")
    url, details = doc.get("url"), doc.get("authorization_details")
    if details is None:
        return None
    if not isinstance(url, str) or not isinstance(details, str):
        raise ValueError("a data-plane token key needs url and authorization_details strings")
    return (url, details)


def settings_to_wire(settings: Settings) -> dict[str, Any]:
    """Settings for a worker, without the client secret: workers never see it (they get tokens only).
    The egress proxy travels whole (its credentials included): workers open data-plane connections."""
    doc: dict[str, Any] = {}
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        if isinstance(value, Path):
            value = str(value)
        elif isinstance(value, Address):
            value = [value.host, value.port]
        elif isinstance(value, UnixAddress):
            value = {"unix": str(value.path)}
        elif isinstance(value, EgressProxy):
            value = {**dataclasses.asdict(value), "no_proxy": list(value.no_proxy)}
        elif isinstance(value, tuple):
            value = list(value)
        doc[field.name] = value
    doc["client_secret"] = None
    return doc


def settings_from_wire(doc: Any) -> Settings:
    if not isinstance(doc, dict):
        raise ValueError("settings are a JSON object")
    hints = typing.get_type_hints(Settings)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(Settings):
        value, hint = doc.get(field.name), hints[field.name]
        if value is not None and hint in (Path, Path | None):
            value = Path(value)
        elif hint in (Address, ListenAddress):
            value = _address_from_wire(field.name, value)
        elif value is not None and hint == EgressProxy | None:
            value = EgressProxy(**{**value, "no_proxy": tuple(value.get("no_proxy") or ())})
        elif isinstance(value, list):
            value = tuple(str(item) for item in value)
        values[field.name] = value
    return Settings(**values)


def _address_from_wire(name: str, value: Any) -> ListenAddress:
    if isinstance(value, dict) and isinstance(value.get("unix"), str):
        return UnixAddress(Path(value["unix"]))
    if not isinstance(value, list) or len(value) != 2:
        raise ValueError(f"{name} must be [host, port] or {{'unix': path}}")
    return Address(str(value[0]), int(value[1]))


def _text(doc: dict[str, Any], key: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str):
        raise ValueError(f"{key} must be a string")
    return value
