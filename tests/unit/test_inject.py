"""The injection transformation (proxy/inject.py) and the YAML stream handling around it (proxy/manifests.py)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.errors import InjectError
from proxy.inject import INJECTED, PLACEHOLDER_TOKEN, InjectOptions, inject
from proxy.manifests import split_documents, transform_stream

BASE = Path(__file__).parents[2] / "deploy" / "kubernetes" / "base" / "deployment.yaml"
OPTIONS = InjectOptions(image="registry.example.com/serving-sidecar:0.1.0")
WI = InjectOptions(auth="workload-identity", token_audience="https://ws.example.com/oidc/v1/token")


def pod_spec_of(containers: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {"metadata": {"labels": {"app": "a"}}, "spec": {"containers": containers, **spec}}


def deployment(*names: str) -> dict[str, Any]:
    template = pod_spec_of([{"name": n, "image": f"example/{n}:1"} for n in names])
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {"selector": {"matchLabels": {"app": "a"}}, "template": template},
    }


def job() -> dict[str, Any]:
    template = pod_spec_of([{"name": "batch", "image": "example/batch:1"}], restartPolicy="Never")
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "nightly"}, "spec": {"template": template}}


def cronjob() -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": "hourly"},
        "spec": {"schedule": "0 * * * *", "jobTemplate": {"spec": job()["spec"]}},
    }


def pod() -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, **pod_spec_of([{"name": "c", "image": "x"}])}


def template_of(document: dict[str, Any]) -> dict[str, Any]:
    if document["kind"] == "Pod":
        return document
    if document["kind"] == "CronJob":
        return document["spec"]["jobTemplate"]["spec"]["template"]  # type: ignore[no-any-return]
    return document["spec"]["template"]  # type: ignore[no-any-return]


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", [])}


WORKLOADS = {
    "Deployment": lambda: deployment("web", "worker"),
    "StatefulSet": lambda: {**deployment("db"), "kind": "StatefulSet"},
    "DaemonSet": lambda: {**deployment("agent"), "kind": "DaemonSet"},
    "Job": job,
    "CronJob": cronjob,
    "Pod": pod,
}


@pytest.mark.parametrize("kind", WORKLOADS)
def test_every_workload_kind_gets_a_native_sidecar_first(kind: str) -> None:
    original = WORKLOADS[kind]()
    kept = copy.deepcopy(original)
    injected = inject(original, OPTIONS)
    assert original == kept, "the argument must not change"
    spec = template_of(injected)["spec"]
    sidecar = spec["initContainers"][0]
    assert sidecar["name"] == "serving-sidecar" and sidecar["restartPolicy"] == "Always"
    assert sidecar["image"] == OPTIONS.image
    assert sidecar["command"] == ["serving-sidecar", "run"]
    assert sidecar["args"] == ["--config", "/etc/serving-sidecar/config.yaml"]
    for container in spec["containers"]:
        assert env_of(container)["SERVING_SIDECAR_URL"] == "http://127.0.0.1:8484"
        assert env_of(container)["DATABRICKS_HOST"] == "http://127.0.0.1:8484"
    assert inject(injected, OPTIONS) == injected, "injecting twice must equal injecting once"


def test_deployment_with_two_containers() -> None:
    injected = inject(deployment("web", "worker"), OPTIONS)
    template = template_of(injected)
    spec = template["spec"]
    assert [c["name"] for c in spec["initContainers"]] == ["serving-sidecar"]
    assert [c["name"] for c in spec["containers"]] == ["web", "worker"]
    for container in spec["containers"]:
        assert env_of(container) == {
            "SERVING_SIDECAR_URL": "http://127.0.0.1:8484",
            "DATABRICKS_HOST": "http://127.0.0.1:8484",
            "DATABRICKS_TOKEN": PLACEHOLDER_TOKEN,
        }
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["serving-sidecar-config"]["configMap"] == {"name": "serving-sidecar"}
    assert volumes["serving-sidecar-oauth"]["secret"]["secretName"] == "serving-sidecar-oauth"
    mounts = {m["name"] for m in spec["initContainers"][0]["volumeMounts"]}
    assert mounts == set(volumes), "every volume the sidecar needs, and no more"
    sidecar_env = env_of(spec["initContainers"][0])
    assert sidecar_env["SERVING_SIDECAR_AUTH"] == "oauth-m2m"
    assert sidecar_env["SERVING_SIDECAR_CLIENT_SECRET_FILE"] == "/var/run/secrets/serving-sidecar/oauth/client-secret"
    assert sidecar_env["SERVING_SIDECAR_ADMIN_LISTEN"] == "0.0.0.0:8486"
    assert template["metadata"]["labels"] == {"app": "a", "serving-sidecar/enabled": "true"}
    record = json.loads(template["metadata"]["annotations"][INJECTED])
    assert record == {
        "version": "0.1.0",
        "image": OPTIONS.image,
        "auth": "oauth-m2m",
        "configMap": "serving-sidecar",
        "secret": "serving-sidecar-oauth",
        "appContainers": ["web", "worker"],
    }
    assert "securityContext" not in spec, "oauth-m2m leaves the pod's securityContext alone"


def test_the_sidecar_is_the_one_of_the_kubernetes_example() -> None:
    example = yaml.safe_load(BASE.read_text())["spec"]["template"]["spec"]
    [reference] = [c for c in example["initContainers"] if c["name"] == "serving-sidecar"]
    sidecar = template_of(inject(deployment("web"), OPTIONS))["spec"]["initContainers"][0]
    for field in ("startupProbe", "livenessProbe", "readinessProbe", "resources", "ports", "command", "restartPolicy"):
        assert sidecar[field] == reference[field], field
    # The example sets the user on the pod; injection cannot, so the container carries it.
    assert sidecar["securityContext"] == {
        **reference["securityContext"],
        "runAsUser": example["securityContext"]["runAsUser"],
        "runAsGroup": example["securityContext"]["runAsGroup"],
    }


def test_a_configmap_and_other_documents_pass_through_unchanged() -> None:
    configmap = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1"}}
    assert inject(configmap, OPTIONS) is configmap
    foreign_job = {**job(), "apiVersion": "batch.volcano.sh/v1alpha1"}  # same kind, another API group
    assert inject(foreign_job, OPTIONS) is foreign_job
    for other in (None, "text", [1, 2], {"kind": "Service"}):
        assert inject(other, OPTIONS) == other


def test_a_list_is_injected_item_by_item() -> None:
    configmap = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}
    listed = {"apiVersion": "v1", "kind": "List", "items": [job(), configmap]}
    injected = inject(listed, OPTIONS)
    assert injected["items"] == [inject(job(), OPTIONS), configmap]


def test_existing_environment_wins_and_own_databricks_clients_are_left_alone() -> None:
    document = deployment("web", "sdk", "mine")
    containers = template_of(document)["spec"]["containers"]
    containers[1]["env"] = [{"name": "DATABRICKS_CLIENT_ID", "value": "sp"}]
    containers[2]["env"] = [{"name": "SERVING_SIDECAR_URL", "value": "http://elsewhere:1"}]
    injected = template_of(inject(document, OPTIONS))["spec"]["containers"]
    assert env_of(injected[1]) == {"DATABRICKS_CLIENT_ID": "sp", "SERVING_SIDECAR_URL": "http://127.0.0.1:8484"}
    assert env_of(injected[2])["SERVING_SIDECAR_URL"] == "http://elsewhere:1"
    assert env_of(injected[2])["DATABRICKS_HOST"] == "http://127.0.0.1:8484"


def test_workload_identity_projects_a_token_and_gives_the_pod_an_fs_group() -> None:
    spec = template_of(inject(deployment("web"), WI))["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    [source] = volumes["serving-sidecar-token"]["projected"]["sources"]
    assert source["serviceAccountToken"]["audience"] == WI.token_audience
    assert not any("secret" in v for v in volumes.values())
    sidecar_env = env_of(spec["initContainers"][0])
    assert sidecar_env["SERVING_SIDECAR_AUTH"] == "workload-identity"
    assert sidecar_env["SERVING_SIDECAR_TOKEN_FILE"] == "/var/run/secrets/serving-sidecar/token/token"
    assert sidecar_env["SERVING_SIDECAR_TOKEN_AUDIENCE"] == WI.token_audience
    assert spec["securityContext"] == {"fsGroup": 10001, "fsGroupChangePolicy": "OnRootMismatch"}

    own = deployment("web")
    template_of(own)["spec"]["securityContext"] = {"fsGroup": 2000, "runAsUser": 1000}
    assert template_of(inject(own, WI))["spec"]["securityContext"] == {"fsGroup": 2000, "runAsUser": 1000}


def test_pod_annotations_override_the_defaults() -> None:
    document = deployment("web")
    template_of(document)["metadata"]["annotations"] = {
        "serving-sidecar/image": "other/image:2",
        "serving-sidecar/config-map": "team-a-config",
        "serving-sidecar/auth": "workload-identity",
        "serving-sidecar/token-audience": "aud",
        "serving-sidecar/endpoints": "fraud-ro, chat-ro",
    }
    spec = template_of(inject(document, OPTIONS))["spec"]
    sidecar = spec["initContainers"][0]
    assert sidecar["image"] == "other/image:2"
    assert env_of(sidecar)["SERVING_SIDECAR_ENDPOINT"] == "fraud-ro,chat-ro"
    assert env_of(sidecar)["SERVING_SIDECAR_TOKEN_AUDIENCE"] == "aud"
    assert {"name": "serving-sidecar-config", "configMap": {"name": "team-a-config"}} in spec["volumes"]


@pytest.mark.parametrize(
    ("annotations", "named"),
    [
        ({"serving-sidecar/auth": "password"}, "serving-sidecar/auth"),
        ({"serving-sidecar/auth": "workload-identity"}, "serving-sidecar/token-audience"),
        ({"serving-sidecar/config-map": "Not_A_Name"}, "serving-sidecar/config-map"),
        ({"serving-sidecar/endpoints": "ok,bad name"}, "serving-sidecar/endpoints"),
        ({"serving-sidecar/image": "two words"}, "serving-sidecar/image"),
    ],
)
def test_a_bad_annotation_is_an_error_naming_it(annotations: dict[str, str], named: str) -> None:
    document = deployment("web")
    template_of(document)["metadata"]["annotations"] = annotations
    with pytest.raises(InjectError, match=f"Deployment/web: .*{named}"):
        inject(document, OPTIONS)


def test_opt_out_and_hand_made_sidecars_are_left_alone() -> None:
    for where in ("labels", "annotations"):
        document = deployment("web")
        template_of(document)["metadata"][where] = {"serving-sidecar/inject": "false"}
        assert inject(document, OPTIONS) is document
    by_hand = deployment("web")
    template_of(by_hand)["spec"]["initContainers"] = [{"name": "serving-sidecar", "image": "x"}]
    assert inject(by_hand, OPTIONS) is by_hand


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {}}, "spec.template"),
        ({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": "x"}}, "containers"),
        (
            {"apiVersion": "v1", "kind": "Pod", **pod_spec_of([{"name": "c"}], volumes={}), "metadata": {"name": "p"}},
            "spec.volumes",
        ),
        (
            {
                "apiVersion": "v1",
                "kind": "Pod",
                **pod_spec_of([{"name": "c"}], volumes=[{"name": "serving-sidecar-tmp", "emptyDir": {}}]),
                "metadata": {"name": "p"},
            },
            "already has a volume named serving-sidecar-tmp",
        ),
    ],
)
def test_malformed_workloads_are_errors_naming_the_object(document: dict[str, Any], message: str) -> None:
    with pytest.raises(InjectError, match=message) as caught:
        inject(document, OPTIONS)
    assert str(caught.value).startswith(f"{document['kind']}/{document['metadata']['name']}: ")


def test_default_options_are_checked() -> None:
    with pytest.raises(InjectError, match="--token-audience"):
        InjectOptions(auth="workload-identity").checked()
    with pytest.raises(InjectError, match="--endpoint: 'a b'"):
        InjectOptions(endpoints=("a b",)).checked()


STREAM = """\
# the app
apiVersion: batch/v1
kind: Job
metadata:
  name: nightly
spec:
  template:
    spec:
      restartPolicy: Never
      containers:
        - name: batch
          image: example/batch:1
          args:
            - |
              first line
              second line
---   # the configuration
apiVersion: v1
kind: ConfigMap
metadata:
  name: c  # kept as written
data: {a: "1"}
...
"""


def test_stream_keeps_untouched_documents_as_written_and_is_idempotent() -> None:
    out = transform_stream(STREAM, lambda doc: inject(doc, OPTIONS))
    chunks = split_documents(out)
    assert chunks[0].startswith("# the app\n")
    assert chunks[1] == split_documents(STREAM)[1], "the ConfigMap's text, comments included"
    docs = list(yaml.safe_load_all(out))
    assert docs[0] == inject(yaml.safe_load(split_documents(STREAM)[0]), OPTIONS)
    assert "|\n" in chunks[0] and "first line\n" in chunks[0], "multi-line strings stay literal blocks"
    assert transform_stream(out, lambda doc: inject(doc, OPTIONS)) == out


def test_stream_errors_say_where() -> None:
    with pytest.raises(InjectError, match="line 3, column 5: mapping values are not allowed"):
        transform_stream("a: 1\n---\nb: c: d\n", lambda doc: doc)
    assert transform_stream("", lambda doc: doc) == ""
    assert transform_stream("# only a comment\n", lambda doc: doc) == "# only a comment\n"
