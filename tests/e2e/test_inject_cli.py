"""`serving-sidecar inject` as a subprocess: its output validates against the Kubernetes schemas (strict, 1.30
and the newest kubernetes-validate knows), a second pass changes nothing, other documents pass through."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.manifests import split_documents
from tests.e2e.schemas import schema_errors

MANIFESTS = """\
# Two containers: both get the sidecar's URL.
apiVersion: apps/v1
kind: Deployment
metadata:
  name: shop
spec:
  replicas: 2
  selector:
    matchLabels: {app: shop}
  template:
    metadata:
      labels: {app: shop}
    spec:
      containers:
        - name: web
          image: registry.example.com/shop-web:1.4
          ports: [{containerPort: 8080}]
        - name: scorer
          image: registry.example.com/shop-scorer:1.4
          env:
            - {name: LOG_LEVEL, value: debug}
---
apiVersion: batch/v1
kind: Job
metadata:
  name: backfill
spec:
  backoffLimit: 1
  template:
    spec:
      restartPolicy: Never
      containers:
        - name: backfill
          image: registry.example.com/backfill:2
          command: ["python", "-m", "backfill"]
---
apiVersion: batch/v1
kind: CronJob
metadata:
  name: nightly
spec:
  schedule: "0 3 * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: OnFailure
          containers:
            - name: report
              image: registry.example.com/report:7
---
# Not a workload: must come out exactly as written.
apiVersion: v1
kind: ConfigMap
metadata:
  name: shop-settings   # comment kept
data:
  currency: EUR
"""


def run_inject(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", "inject", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def injected(*args: str, stdin: str) -> str:
    done = run_inject(*args, stdin=stdin)
    assert done.returncode == 0, done.stderr
    return done.stdout


def docs_of(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def template_of(doc: dict[str, Any]) -> dict[str, Any]:
    spec = doc["spec"]["jobTemplate"]["spec"] if doc["kind"] == "CronJob" else doc["spec"]
    return spec["template"]  # type: ignore[no-any-return]


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    return template_of(doc)["spec"]  # type: ignore[no-any-return]


AUTH_ARGS = {
    "oauth-m2m": ["--image", "registry.example.com/serving-sidecar:0.1.0"],
    "workload-identity": [
        *("--auth", "workload-identity", "--token-audience", "https://ws.example.com/oidc/v1/token"),
        *("--endpoint", "fraud-ro"),
    ],
}


@pytest.mark.parametrize("auth", AUTH_ARGS)
def test_inject_output_validates_and_is_idempotent(auth: str, tmp_path: Path) -> None:
    source = tmp_path / "app.yaml"
    source.write_text(MANIFESTS)
    out = injected("-f", str(source), *AUTH_ARGS[auth], stdin="")
    docs = docs_of(out)
    assert [d["kind"] for d in docs] == ["Deployment", "Job", "CronJob", "ConfigMap"]
    errors = schema_errors(docs)
    assert not errors, "\n".join(errors)

    for doc in docs[:3]:
        spec = pod_spec(doc)
        [sidecar] = spec["initContainers"]
        assert sidecar["name"] == "serving-sidecar" and sidecar["restartPolicy"] == "Always"
        for container in spec["containers"]:
            env = {e["name"]: e["value"] for e in container["env"]}
            assert env["SERVING_SIDECAR_URL"] == env["DATABRICKS_HOST"] == "http://127.0.0.1:8484"
        assert json.loads(template_of(doc)["metadata"]["annotations"]["serving-sidecar/injected"])["auth"] == auth
    assert [c["name"] for c in pod_spec(docs[0])["containers"]] == ["web", "scorer"]

    assert split_documents(out)[-1] == split_documents(MANIFESTS)[-1], "the ConfigMap is written back untouched"
    assert injected(*AUTH_ARGS[auth], stdin=out) == out, "injecting twice must give the same output as once"


def test_bad_input_exits_2_with_one_line(tmp_path: Path) -> None:
    done = run_inject(stdin="kind: Deployment\napiVersion: apps/v1\nmetadata: {name: d}\nspec: {}\n")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip() == "serving-sidecar inject: stdin: Deployment/d: spec.template must be a mapping"
    done = run_inject("-f", str(tmp_path / "missing.yaml"))
    assert done.returncode == 2 and "cannot read" in done.stderr and "Traceback" not in done.stderr
    done = run_inject("--auth", "workload-identity", stdin=MANIFESTS)
    assert done.returncode == 2 and "--token-audience" in done.stderr
