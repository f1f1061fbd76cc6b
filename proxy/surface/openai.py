"""OpenAI-compatible routes, as the workspace serves them under `/serving-endpoints/`: pure decisions.

The `model` field of the JSON body names the serving endpoint; the body then goes, unchanged, to that
endpoint's invocation URL. These are the only routes whose body the sidecar parses.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from proxy.errors import EndpointNotFound, InvalidRequest
from proxy.routing import is_valid_name
from proxy.surface.messages import Forward

PREFIX = "/serving-endpoints"
ROUTES = frozenset(f"{PREFIX}/{tail}" for tail in ("chat/completions", "completions", "embeddings", "responses"))
MODELS = f"{PREFIX}/models"


def forward_by_model(body: bytes) -> Forward:
    """The endpoint the body's `model` names; InvalidRequest (400) or EndpointNotFound (404) otherwise."""
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise InvalidRequest("the request body must be a JSON object whose 'model' field names a serving endpoint")
    model = doc.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("missing 'model': set it to the name of the serving endpoint to call")
    if not is_valid_name(model):
        raise EndpointNotFound(
            f"model {model!r} is not a serving endpoint name (letters, digits, '-' and '_', at most 64)"
        )
    return Forward(model)


def model_list(names: Iterable[str]) -> dict[str, Any]:
    """The OpenAI list shape (`GET /models`) of endpoint names."""
    models = [{"id": name, "object": "model", "created": 0, "owned_by": "databricks"} for name in sorted(set(names))]
    return {"object": "list", "data": models}
