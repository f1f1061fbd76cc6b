"""Routes: a downstream request path -> (endpoint name, served model), or nothing.

Pure. The raw (still percent-encoded) path is matched against one strict pattern, so `..`, encoded
slashes, doubled slashes and any other path trick simply do not match: the upstream URL is later built
from the endpoint's resolved invocation URL, never from the caller's path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Databricks endpoint and served-entity names: letters, digits, dashes and underscores.
NAME = r"[A-Za-z0-9_-]{1,64}"
_PATTERN = re.compile(rf"/serving-endpoints/(?P<endpoint>{NAME})(?:/served-models/(?P<model>{NAME}))?/invocations")


@dataclass(frozen=True)
class Route:
    endpoint: str
    served_model: str | None = None


def match(raw_path: str) -> Route | None:
    """The route for a raw request path (query string allowed and ignored), or None."""
    path = raw_path.split("?", 1)[0]
    found = _PATTERN.fullmatch(path)
    if found is None:
        return None
    return Route(found["endpoint"], found["model"])


def is_valid_name(name: str) -> bool:
    return re.fullmatch(NAME, name) is not None


def invocation_url(base_url: str, served_model: str | None) -> str:
    """The URL to POST: the endpoint's invocation URL, or its served-models form for one served model."""
    if served_model is None:
        return base_url
    prefix = base_url.removesuffix("/invocations")
    return f"{prefix}/served-models/{served_model}/invocations"
