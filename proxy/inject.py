"""Adding serving-sidecar to Kubernetes workloads: the one transformation behind `inject` and the webhook.

Pure: dicts in, dicts out, no I/O. Rules:
1. `inject(document, defaults)` returns a new document and never changes its argument. A document that
   is not a Pod, Deployment, StatefulSet, DaemonSet, Job or CronJob comes back as it was (a `List`'s
   items are injected one by one).
2. Idempotent: a pod template that carries the `serving-sidecar/injected` annotation or already has a
   container named `serving-sidecar` is left as it is, and so is one labelled or annotated
   `serving-sidecar/inject: "false"`. Injecting twice gives the same document as injecting once.
3. Per-pod options: the pod template's `serving-sidecar/<option>` annotations (ANNOTATIONS) override the
   defaults. A bad value is an `InjectError` naming the object and the annotation, never a half-injected pod.
4. What is added, and nothing else: the native sidecar first in `initContainers` (so the app's own init
   containers can call it too), its volumes, `SERVING_SIDECAR_URL` (and, for a container that does not
   configure a Databricks client itself, `DATABRICKS_HOST` + a placeholder `DATABRICKS_TOKEN`, so the SDK
   and MLflow go through the sidecar) in each app container, the label `serving-sidecar/enabled: "true"`
   (what the PodMonitor selects) and the `serving-sidecar/injected` annotation recording what was added.
   Environment variables a container already sets are kept. The pod's securityContext is changed only
   for workload identity and only when it has no `fsGroup`: the kubelet writes the projected token
   readable by the pod's fsGroup, so one is needed for the non-root sidecar to read it.
5. The sidecar is the one of deploy/kubernetes/base (probes, resources, restricted securityContext); the
   configuration comes from a ConfigMap holding `config.yaml` (host, client_id, endpoints, ...), the
   credential from a Secret holding `client-secret` or from a projected service-account token.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from proxy import __version__
from proxy.errors import InjectError

PREFIX = "serving-sidecar/"
INJECTED = PREFIX + "injected"
OPT_OUT = PREFIX + "inject"
ENABLED_LABEL = PREFIX + "enabled"
SIDECAR = "serving-sidecar"
AUTH_MODES = ("oauth-m2m", "workload-identity")
DEFAULT_IMAGE = f"serving-sidecar:{__version__}"

HTTP_URL = "http://127.0.0.1:8484"
ADMIN_PORT = 8486
UID = 10001
CONFIG_DIR = "/etc/serving-sidecar"
SECRET_DIR = "/var/run/secrets/serving-sidecar/oauth"
TOKEN_DIR = "/var/run/secrets/serving-sidecar/token"
VOLUMES = {
    "config": "serving-sidecar-config",
    "tmp": "serving-sidecar-tmp",
    "oauth-m2m": "serving-sidecar-oauth",
    "workload-identity": "serving-sidecar-token",
}
# A container that sets any of these configures its own Databricks client: DATABRICKS_HOST is left to it.
DATABRICKS_CLIENT_ENV = (
    "DATABRICKS_HOST",
    "DATABRICKS_TOKEN",
    "DATABRICKS_CLIENT_ID",
    "DATABRICKS_CLIENT_SECRET",
    "DATABRICKS_CONFIG_PROFILE",
    "DATABRICKS_AUTH_TYPE",
)
# The SDK and MLflow refuse to start without a credential; the sidecar drops the caller's Authorization.
PLACEHOLDER_TOKEN = "unused-serving-sidecar-authenticates"

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_ENDPOINT = re.compile(r"^[A-Za-z0-9_-]+$")

# (API group, kind) -> where the pod template is; () is the document itself.
TEMPLATE_PATHS: dict[tuple[str, str], tuple[str, ...]] = {
    ("", "Pod"): (),
    ("apps", "Deployment"): ("spec", "template"),
    ("apps", "StatefulSet"): ("spec", "template"),
    ("apps", "DaemonSet"): ("spec", "template"),
    ("batch", "Job"): ("spec", "template"),
    ("batch", "CronJob"): ("spec", "jobTemplate", "spec", "template"),
}


@dataclass(frozen=True)
class InjectOptions:
    """What to inject. Each field is also a pod annotation `serving-sidecar/<name>` (see ANNOTATIONS)."""

    image: str = DEFAULT_IMAGE
    config_map: str = "serving-sidecar"  # holds config.yaml
    secret: str = "serving-sidecar-oauth"  # holds client-secret (oauth-m2m only)
    auth: str = "oauth-m2m"
    token_audience: str | None = None  # workload-identity only, and then required
    endpoints: tuple[str, ...] = ()  # warmed at start; empty: the config file's list

    def checked(self, where: str = "options", prefix: str = "--") -> InjectOptions:
        """These options, or an InjectError naming what is wrong as `<prefix><option>` (a flag or an annotation)."""
        if not self.image.strip() or any(c.isspace() for c in self.image):
            raise InjectError(f"{where}: {prefix}image {self.image!r} is not an image reference")
        for option, value in (("config-map", self.config_map), ("secret", self.secret)):
            if len(value) > 253 or not _NAME.match(value):
                raise InjectError(f"{where}: {prefix}{option} {value!r} is not a Kubernetes object name")
        if self.auth not in AUTH_MODES:
            raise InjectError(f"{where}: {prefix}auth must be one of {', '.join(AUTH_MODES)}, got {self.auth!r}")
        if self.auth == "workload-identity" and not self.token_audience:
            raise InjectError(f"{where}: auth workload-identity needs {prefix}token-audience")
        bad = [name for name in self.endpoints if not _ENDPOINT.match(name)]
        if bad:
            option = "endpoints" if prefix == PREFIX else "endpoint"
            raise InjectError(f"{where}: {prefix}{option}: {bad[0]!r} is not a serving endpoint name")
        return self


# Pod annotation -> InjectOptions field. `endpoints` is comma-separated.
ANNOTATIONS = {
    PREFIX + "image": "image",
    PREFIX + "config-map": "config_map",
    PREFIX + "secret": "secret",
    PREFIX + "auth": "auth",
    PREFIX + "token-audience": "token_audience",
    PREFIX + "endpoints": "endpoints",
}


def options_for(annotations: Mapping[str, Any], defaults: InjectOptions, where: str) -> InjectOptions:
    """The defaults overridden by a pod's `serving-sidecar/<option>` annotations, checked."""
    changes: dict[str, Any] = {}
    for key, field in ANNOTATIONS.items():
        if key in annotations:
            value = str(annotations[key]).strip()
            changes[field] = tuple(n.strip() for n in value.split(",") if n.strip()) if field == "endpoints" else value
    return replace(defaults, **changes).checked(where, PREFIX)


def inject(document: Any, defaults: InjectOptions) -> Any:
    """`document` with serving-sidecar added to its pod template (see the module rules); never modifies it."""
    if not isinstance(document, dict):
        return document
    if document.get("kind") == "List" and isinstance(document.get("items"), list):
        return {**document, "items": [inject(item, defaults) for item in document["items"]]}
    path = template_path(document)
    if path is None:
        return document
    where = describe(document)
    result = copy.deepcopy(document)
    template = _dig(result, path, where)
    if not _should_inject(template, where):
        return document
    _inject_pod(template, defaults, where)
    return result


def template_path(document: Mapping[str, Any]) -> tuple[str, ...] | None:
    """Where the pod template of a workload document is, or None for any other document."""
    api_version, kind = str(document.get("apiVersion", "")), str(document.get("kind", ""))
    group = api_version.rpartition("/")[0]
    return TEMPLATE_PATHS.get((group, kind))


def describe(document: Mapping[str, Any]) -> str:
    metadata = document.get("metadata")
    name = metadata.get("name") or metadata.get("generateName") if isinstance(metadata, dict) else None
    return f"{document.get('kind')}/{name or '(unnamed)'}"


def is_injected(pod: Mapping[str, Any]) -> bool:
    """Whether a pod (or pod template) already has serving-sidecar: the annotation or the container."""
    metadata, spec = pod.get("metadata"), pod.get("spec")
    if isinstance(metadata, dict) and INJECTED in (metadata.get("annotations") or {}):
        return True
    if not isinstance(spec, dict):
        return False
    lists = [spec.get(key) for key in ("initContainers", "containers")]
    every = [c for containers in lists if isinstance(containers, list) for c in containers]
    return any(isinstance(c, dict) and c.get("name") == SIDECAR for c in every)


def _dig(document: dict[str, Any], path: tuple[str, ...], where: str) -> dict[str, Any]:
    node = document
    for depth, key in enumerate(path):
        child = node.get(key)
        if not isinstance(child, dict):
            raise InjectError(f"{where}: {'.'.join(path[: depth + 1])} must be a mapping")
        node = child
    return node


def _should_inject(template: dict[str, Any], where: str) -> bool:
    metadata = template.setdefault("metadata", {})
    if not isinstance(metadata, dict):
        raise InjectError(f"{where}: the pod template's metadata must be a mapping")
    spec = template.get("spec")
    if not isinstance(spec, dict) or not isinstance(spec.get("containers"), list):
        raise InjectError(f"{where}: the pod template needs spec.containers (a list)")
    for key in ("labels", "annotations"):
        if not isinstance(metadata.get(key) or {}, dict):
            raise InjectError(f"{where}: metadata.{key} must be a mapping")
    labels, annotations = metadata.get("labels") or {}, metadata.get("annotations") or {}
    opted_out = "false" in (labels.get(OPT_OUT), annotations.get(OPT_OUT))
    return not opted_out and not is_injected(template)


def _inject_pod(template: dict[str, Any], defaults: InjectOptions, where: str) -> None:
    metadata, spec = template["metadata"], template["spec"]
    options = options_for(metadata.get("annotations") or {}, defaults, where)
    containers = _containers(spec, "containers", where)
    init = _containers(spec, "initContainers", where)
    volumes = _list(spec, "volumes", where)
    taken = {str(v.get("name")) for v in volumes if isinstance(v, dict)} & set(_volume_names(options))
    if taken:
        raise InjectError(f"{where}: the pod already has a volume named {sorted(taken)[0]}")
    spec["initContainers"] = [sidecar_container(options), *init]
    spec["volumes"] = [*volumes, *sidecar_volumes(options)]
    fs_group = _fs_group(spec, options)
    for container in containers:
        container["env"] = app_env(container.get("env") or [], where)
    metadata["labels"] = {**(metadata.get("labels") or {}), ENABLED_LABEL: "true"}
    record = injection_record(options, [c.get("name") for c in containers], fs_group)
    metadata["annotations"] = {**(metadata.get("annotations") or {}), INJECTED: record}


def _list(spec: dict[str, Any], key: str, where: str) -> list[Any]:
    value = spec.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise InjectError(f"{where}: spec.{key} must be a list")
    return value


def _containers(spec: dict[str, Any], key: str, where: str) -> list[dict[str, Any]]:
    containers = _list(spec, key, where)
    if not all(isinstance(c, dict) for c in containers):
        raise InjectError(f"{where}: every entry of spec.{key} must be a mapping")
    return containers


def _volume_names(options: InjectOptions) -> list[str]:
    return [VOLUMES["config"], VOLUMES["tmp"], VOLUMES[options.auth]]


def _fs_group(spec: dict[str, Any], options: InjectOptions) -> int | None:
    """Workload identity without a pod fsGroup: set one (see rule 4). Returns the fsGroup it set, if any."""
    context = spec.get("securityContext") or {}
    if options.auth != "workload-identity" or context.get("fsGroup") is not None:
        return None
    spec["securityContext"] = {**context, "fsGroup": UID, "fsGroupChangePolicy": "OnRootMismatch"}
    return UID


def app_env(env: list[Any], where: str) -> list[Any]:
    """An app container's env with the sidecar's URL (and the Databricks client's host) added; its own entries win."""
    if not all(isinstance(e, dict) and "name" in e for e in env):
        raise InjectError(f"{where}: every env entry of a container needs a name")
    names = {e["name"] for e in env}
    added = [{"name": "SERVING_SIDECAR_URL", "value": HTTP_URL}] if "SERVING_SIDECAR_URL" not in names else []
    if names.isdisjoint(DATABRICKS_CLIENT_ENV):
        added += [
            {"name": "DATABRICKS_HOST", "value": HTTP_URL},
            {"name": "DATABRICKS_TOKEN", "value": PLACEHOLDER_TOKEN},
        ]
    return [*env, *added]


def sidecar_container(options: InjectOptions) -> dict[str, Any]:
    """The native sidecar: an init container with restartPolicy Always, as in deploy/kubernetes/base."""
    return {
        "name": SIDECAR,
        "image": options.image,
        "imagePullPolicy": "IfNotPresent",
        "restartPolicy": "Always",
        "command": ["serving-sidecar", "run"],
        "args": ["--config", f"{CONFIG_DIR}/config.yaml"],
        "env": sidecar_env(options),
        "ports": [{"name": "sidecar-admin", "containerPort": ADMIN_PORT, "protocol": "TCP"}],
        # startup: holds the app containers back until the sidecar can serve (2 s x 60 = 2 minutes)
        "startupProbe": _probe("/startupz", period=2, failures=60),
        "livenessProbe": _probe("/healthz", period=10, failures=3),
        "readinessProbe": _probe("/readyz", period=5, failures=2),
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "256Mi"}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "runAsUser": UID,
            "runAsGroup": UID,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": _mounts(options),
    }


def _probe(path: str, *, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "sidecar-admin"},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


def sidecar_env(options: InjectOptions) -> list[dict[str, str]]:
    """Settings the pod depends on, so the config file cannot contradict them (env beats the file)."""
    env = {
        "SERVING_SIDECAR_HTTP_LISTEN": "127.0.0.1:8484",  # what SERVING_SIDECAR_URL points at
        "SERVING_SIDECAR_ADMIN_LISTEN": f"0.0.0.0:{ADMIN_PORT}",  # the kubelet probes the pod IP
        "SERVING_SIDECAR_AUTH": options.auth,
    }
    if options.auth == "oauth-m2m":
        env["SERVING_SIDECAR_CLIENT_SECRET_FILE"] = f"{SECRET_DIR}/client-secret"
    else:
        env["SERVING_SIDECAR_TOKEN_FILE"] = f"{TOKEN_DIR}/token"
        env["SERVING_SIDECAR_TOKEN_AUDIENCE"] = str(options.token_audience)
    if options.endpoints:
        env["SERVING_SIDECAR_ENDPOINT"] = ",".join(options.endpoints)
    return [{"name": name, "value": value} for name, value in env.items()]


def _mounts(options: InjectOptions) -> list[dict[str, Any]]:
    credential = SECRET_DIR if options.auth == "oauth-m2m" else TOKEN_DIR
    return [
        {"name": VOLUMES["config"], "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": VOLUMES["tmp"], "mountPath": "/tmp"},  # noqa: S108 (a private in-memory emptyDir)
        {"name": VOLUMES[options.auth], "mountPath": credential, "readOnly": True},
    ]


def sidecar_volumes(options: InjectOptions) -> list[dict[str, Any]]:
    """The config (ConfigMap, mounted as a directory so updates reach it), /tmp, and the credential."""
    volumes: list[dict[str, Any]] = [
        {"name": VOLUMES["config"], "configMap": {"name": options.config_map}},
        {"name": VOLUMES["tmp"], "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
    ]
    if options.auth == "oauth-m2m":
        # Mounted into the sidecar container only. The files are root-owned unless the pod has an
        # fsGroup, so the non-root sidecar needs the read bit for others (0444). No subPath: a rotated
        # Secret replaces the file in place and the sidecar reads it at its next token fetch.
        volumes.append({"name": VOLUMES["oauth-m2m"], "secret": {"secretName": options.secret, "defaultMode": 0o444}})
    else:
        token = {"path": "token", "audience": options.token_audience, "expirationSeconds": 3600}
        projected = {"sources": [{"serviceAccountToken": token}]}
        volumes.append({"name": VOLUMES["workload-identity"], "projected": projected})
    return volumes


def injection_record(options: InjectOptions, app_containers: list[Any], fs_group: int | None) -> str:
    """The `serving-sidecar/injected` annotation: what was added, as compact JSON with sorted keys."""
    record: dict[str, Any] = {
        "version": __version__,
        "image": options.image,
        "auth": options.auth,
        "configMap": options.config_map,
        "appContainers": app_containers,
    }
    if options.auth == "oauth-m2m":
        record["secret"] = options.secret
    else:
        record["tokenAudience"] = options.token_audience
    if options.endpoints:
        record["endpoints"] = list(options.endpoints)
    if fs_group is not None:
        record["podFsGroup"] = fs_group
    return json.dumps(record, sort_keys=True, separators=(",", ":"))
