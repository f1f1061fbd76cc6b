"""Kubernetes objects checked against the API server's OpenAPI schemas (kubernetes-validate, strict).

Shared by the deploy/ manifests test and the `inject` tests. CRDs have no bundled schema: the caller
passes subset schemas for the ones it expects (others are an error).
"""

from __future__ import annotations

from typing import Any

import pytest

KUBERNETES_VERSIONS = ("1.30.0", "latest")  # 1.30: oldest supported here (native sidecars on by default)
INSTALL_DEV = "run `make venv` (pip install -e '.[dev]')"


def schema_errors(docs: list[dict[str, Any]], crd_schemas: dict[str, dict[str, Any]] | None = None) -> list[str]:
    """Every schema violation of `docs`, as `Kind/name (Kubernetes version): path: message` lines."""
    try:
        import jsonschema
        from kubernetes_validate import utils as kv
    except ImportError:
        pytest.fail(f"kubernetes-validate is not installed: {INSTALL_DEV}", pytrace=False)
    versions = [kv.latest_version() if v == "latest" else v for v in KUBERNETES_VERSIONS]
    errors = []
    for doc in docs:
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        if crd_schemas is not None and doc["kind"] in crd_schemas and "." in doc["apiVersion"].split("/")[0]:
            for error in jsonschema.Draft202012Validator(crd_schemas[doc["kind"]]).iter_errors(doc):
                errors.append(f"{name}: {error.json_path}: {error.message}")
            continue
        for version in versions:
            try:
                kv.validate(doc, version, strict=True)
            except kv.ValidationError as error:
                errors.append(f"{name} (Kubernetes {version}): {error.json_path}: {error.message}")
            except kv.SchemaNotFoundError as error:
                errors.append(f"{name}: {error.message}")
    return errors
