"""The environment `inject` gives an app container really sends the Databricks SDK through the sidecar."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from databricks.sdk import WorkspaceClient

from proxy.app import Sidecar
from proxy.inject import HTTP_URL, InjectOptions, inject
from tests.integration.conftest import url


def injected_app_env() -> dict[str, str]:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "app"}]}}
    [app] = inject(pod, InjectOptions())["spec"]["containers"]
    return {e["name"]: e["value"] for e in app["env"]}


async def test_an_unconfigured_sdk_queries_through_the_sidecar(
    sidecar: Sidecar, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in list(os.environ):
        if key.startswith(("DATABRICKS_", "SERVING_SIDECAR_")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(tmp_path / "missing.cfg"))
    env = injected_app_env()
    assert env["DATABRICKS_HOST"] == HTTP_URL
    for key, value in env.items():  # the sidecar of this test listens on another port than 8484
        monkeypatch.setenv(key, value.replace(HTTP_URL, url(sidecar, "")))

    def query() -> object:
        return WorkspaceClient().serving_endpoints.query(name="fraud-ro", dataframe_records=[{"a": 1.5, "b": 2}])

    answer = await asyncio.to_thread(query)
    assert answer.predictions == [3.5]  # type: ignore[attr-defined]
