"""The admission webhook over real HTTPS (a trustme CA), answering AdmissionReviews as the API server sends them."""

from __future__ import annotations

import base64
import copy
import json
import os
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jsonpatch
import pytest
import trustme

from proxy.config import Address
from proxy.inject import InjectOptions, inject
from proxy.injector import Injector

DEFAULTS = InjectOptions(image="registry.example.com/serving-sidecar:0.1.0", endpoints=("fraud-ro",))


def write_certificate(ca: trustme.CA, directory: Path) -> tuple[Path, Path]:
    issued = ca.issue_cert("127.0.0.1", "serving-sidecar-injector.serving-sidecar.svc")
    cert, key = directory / "tls.crt", directory / "tls.key"
    cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(key))
    return cert, key


@pytest.fixture
async def injector(tmp_path: Path) -> AsyncIterator[tuple[Injector, trustme.CA]]:
    ca = trustme.CA()
    cert, key = write_certificate(ca, tmp_path)
    server = Injector(DEFAULTS, Address("127.0.0.1", 0), cert, key)
    await server.start()
    try:
        yield server, ca
    finally:
        await server.stop()


@pytest.fixture
async def post(injector: tuple[Injector, trustme.CA]) -> AsyncIterator[Any]:
    server, ca = injector
    context = ssl.create_default_context()
    ca.configure_trust(context)

    async with aiohttp.ClientSession() as session:

        async def send(body: bytes | dict[str, Any]) -> tuple[int, Any]:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            url = f"https://127.0.0.1:{server.port}/mutate"
            async with session.post(url, data=data, ssl=context, headers={"Content-Type": "application/json"}) as resp:
                text = await resp.text()
                return resp.status, json.loads(text) if resp.content_type == "application/json" else text

        yield send


def pod(labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """A pod as the API server hands it to a webhook: from a ReplicaSet, defaults filled in."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "shop-7c9d8-",
            "namespace": "shop",
            "labels": {"app": "shop", **(labels or {})},
            "annotations": annotations or {},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "shop-7c9d8", "uid": "u"}],
        },
        "spec": {
            "containers": [
                {"name": "web", "image": "shop-web:1", "resources": {}, "terminationMessagePolicy": "File"},
                {"name": "scorer", "image": "shop-scorer:1", "env": [{"name": "A", "value": "1"}]},
            ],
            "restartPolicy": "Always",
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default",
        },
        "status": {},
    }


def review(obj: dict[str, Any], uid: str = "705ab4f5-6393-11e8-b7cc-42010a800002") -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "namespace": "shop",
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": obj,
            "oldObject": None,
            "dryRun": False,
        },
    }


LABELLED = {"serving-sidecar/inject": "true"}


async def test_a_labelled_pod_gets_a_patch_that_gives_the_same_pod_as_inject(post: Any) -> None:
    original = pod(LABELLED)
    status, answer = await post(review(original, uid="uid-1"))
    assert status == 200
    assert answer["apiVersion"] == "admission.k8s.io/v1" and answer["kind"] == "AdmissionReview"
    response = answer["response"]
    assert response["uid"] == "uid-1" and response["allowed"] is True
    assert response["patchType"] == "JSONPatch"
    operations = json.loads(base64.b64decode(response["patch"]))
    patched = jsonpatch.apply_patch(copy.deepcopy(original), operations)
    assert patched == inject(original, DEFAULTS)
    assert patched["spec"]["initContainers"][0]["name"] == "serving-sidecar"
    assert "serving-sidecar/injected" in patched["metadata"]["annotations"]
    assert {op["path"] for op in operations} <= {
        "/metadata/labels/serving-sidecar~1enabled",
        "/metadata/annotations/serving-sidecar~1injected",
        "/spec/initContainers",
        "/spec/volumes",
        "/spec/containers",
    }, "only what the sidecar needs is touched"


async def test_pod_annotations_choose_the_options(post: Any) -> None:
    annotations = {"serving-sidecar/auth": "workload-identity", "serving-sidecar/token-audience": "aud"}
    original = pod(LABELLED, annotations)
    _, answer = await post(review(original))
    patched = jsonpatch.apply_patch(original, json.loads(base64.b64decode(answer["response"]["patch"])))
    assert patched == inject(original, DEFAULTS)
    [volume] = [v for v in patched["spec"]["volumes"] if "projected" in v]
    [source] = volume["projected"]["sources"]
    assert source["serviceAccountToken"]["audience"] == "aud"
    assert patched["spec"]["securityContext"]["fsGroup"] == 10001


@pytest.mark.parametrize(
    "obj",
    [
        pod(),  # no label
        pod({"serving-sidecar/inject": "false"}),
        inject(pod(LABELLED), DEFAULTS),  # already injected (e.g. a re-invocation)
    ],
    ids=["unlabelled", "label-false", "already-injected"],
)
async def test_other_pods_are_allowed_unchanged(post: Any, obj: dict[str, Any]) -> None:
    status, answer = await post(review(obj, uid="uid-2"))
    assert status == 200
    assert answer["response"] == {"uid": "uid-2", "allowed": True}


async def test_other_kinds_are_allowed_unchanged(post: Any) -> None:
    body = review({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}, uid="uid-3")
    body["request"]["kind"] = {"group": "", "version": "v1", "kind": "ConfigMap"}
    _, answer = await post(body)
    assert answer["response"] == {"uid": "uid-3", "allowed": True}


async def test_a_bad_option_annotation_denies_the_pod_with_the_reason(post: Any) -> None:
    status, answer = await post(review(pod(LABELLED, {"serving-sidecar/auth": "password"}), uid="uid-4"))
    assert status == 200
    response = answer["response"]
    assert response["uid"] == "uid-4" and response["allowed"] is False
    assert response["status"]["code"] == 400
    assert "serving-sidecar/auth" in response["status"]["message"]
    assert "patch" not in response


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"\xff\xfe",
        b"[]",
        {"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": {"uid": "u"}},
        {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"},
        {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": ""}},
        {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": "u", "kind": "Pod"}},
    ],
    ids=["not-json", "not-utf8", "not-an-object", "v1beta1", "no-request", "empty-uid", "kind-not-object"],
)
async def test_a_malformed_review_is_400_and_the_server_keeps_serving(post: Any, body: Any) -> None:
    status, text = await post(body)
    assert status == 400
    assert isinstance(text, str) and text.startswith("malformed AdmissionReview: ")
    status, answer = await post(review(pod(LABELLED)))
    assert status == 200 and answer["response"]["allowed"] is True and "patch" in answer["response"]


async def test_health_and_certificate_reload(injector: tuple[Injector, trustme.CA], tmp_path: Path) -> None:
    server, old_ca = injector

    async def health(ca: trustme.CA) -> int:
        context = ssl.create_default_context()
        ca.configure_trust(context)
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"https://127.0.0.1:{server.port}/healthz", ssl=context) as resp,
        ):
            return resp.status

    assert await health(old_ca) == 200
    assert not server.reload_certificate(), "nothing changed yet"
    new_ca = trustme.CA()
    renewed = tmp_path / "renewed"
    renewed.mkdir()
    cert, key = write_certificate(new_ca, renewed)
    server.cert.write_bytes(cert.read_bytes())
    server.key.write_bytes(key.read_bytes())
    future = (server.cert.stat().st_mtime + 10, server.cert.stat().st_mtime + 10)
    os.utime(server.cert, future)
    os.utime(server.key, future)
    assert server.reload_certificate()
    assert await health(new_ca) == 200
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await health(old_ca)
