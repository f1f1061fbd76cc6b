"""The mutating admission webhook: an AdmissionReview (admission.k8s.io/v1) in, a JSONPatch adding serving-sidecar out.

Rules:
1. Only pods labelled `serving-sidecar/inject: "true"` are changed (the MutatingWebhookConfiguration's
   objectSelector sends only those; the label is checked again here). Any other object, an unlabelled pod
   and a pod that already has the sidecar are allowed unchanged: a response without a patch.
2. The pod is changed by `inject.inject`, the function behind `serving-sidecar inject`; the patch is the
   JSON difference between the pod as received and the injected pod (`json_patch`).
3. A body that is not a v1 AdmissionReview with a request uid is answered 400 with the reason in plain
   text; the server goes on serving. A labelled pod whose `serving-sidecar/*` annotations hold a bad value
   is denied (allowed false, code 400, the message names the annotation), so the pod's events say why
   instead of the pod starting without its sidecar.
4. The configuration ships with failurePolicy Ignore: while this server is unreachable, pods are created
   without the sidecar rather than not at all.
5. The certificate files are re-read when they change (`reload_certificate`, checked every
   CERT_CHECK_INTERVAL seconds), so a renewed Secret (cert-manager) is served without a restart.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from proxy.config import Address
from proxy.errors import InjectError
from proxy.inject import PREFIX, InjectOptions, describe, inject, is_injected

log = logging.getLogger("serving_sidecar.injector")

INJECT_LABEL = PREFIX + "inject"
REVIEW_VERSION = "admission.k8s.io/v1"
MAX_REVIEW_BYTES = 6 * 1024 * 1024  # a pod is at most ~1.5 MiB in etcd; the review wraps it once
CERT_CHECK_INTERVAL = 60.0


class MalformedReview(ValueError):
    """The request body is not an AdmissionReview this webhook can answer."""


@dataclass(frozen=True)
class Decision:
    """One answered review: the AdmissionReview to send back and what was decided, for the log."""

    review: dict[str, Any]
    outcome: str  # injected | not-labelled | already-injected | not-a-pod | denied
    pod: str


def decide(body: Any, defaults: InjectOptions) -> Decision:
    """The answer to a parsed AdmissionReview (rules 1-3); MalformedReview if it is not one."""
    request = _request(body)
    uid, kind = request["uid"], request.get("kind") or {}
    pod = request.get("object")
    if (kind.get("group"), kind.get("kind")) != ("", "Pod") or not isinstance(pod, dict):
        return _allow(uid, "not-a-pod", str(kind.get("kind")))
    pod = {**pod, "apiVersion": "v1", "kind": "Pod"}
    name = f"{request.get('namespace') or '-'}/{describe(pod).split('/', 1)[1]}"
    if not _labelled(pod):
        return _allow(uid, "not-labelled", name)
    if is_injected(pod):
        return _allow(uid, "already-injected", name)
    try:
        injected = inject(pod, defaults)
    except InjectError as error:
        status = {"code": 400, "message": f"serving-sidecar: {error}"}
        return Decision(_review({"uid": uid, "allowed": False, "status": status}), "denied", name)
    patch = base64.b64encode(json.dumps(json_patch(pod, injected)).encode()).decode()
    return Decision(_review({"uid": uid, "allowed": True, "patchType": "JSONPatch", "patch": patch}), "injected", name)


def _request(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise MalformedReview("the body is not a JSON object")
    if (body.get("apiVersion"), body.get("kind")) != (REVIEW_VERSION, "AdmissionReview"):
        raise MalformedReview(f"expected kind AdmissionReview, apiVersion {REVIEW_VERSION}")
    request = body.get("request")
    if not isinstance(request, dict) or not isinstance(request.get("uid"), str) or not request["uid"]:
        raise MalformedReview("request.uid is missing")
    if not isinstance(request.get("kind") or {}, dict):
        raise MalformedReview("request.kind is not an object")
    return request


def _labelled(pod: dict[str, Any]) -> bool:
    metadata = pod.get("metadata")
    labels = metadata.get("labels") if isinstance(metadata, dict) else None
    return isinstance(labels, dict) and labels.get(INJECT_LABEL) == "true"


def _allow(uid: str, outcome: str, name: str) -> Decision:
    return Decision(_review({"uid": uid, "allowed": True}), outcome, name)


def _review(response: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": REVIEW_VERSION, "kind": "AdmissionReview", "response": response}


def json_patch(old: dict[str, Any], new: dict[str, Any], path: str = "") -> list[dict[str, Any]]:
    """RFC 6902 operations turning `old` into `new`: objects are compared member by member, lists whole."""
    ops: list[dict[str, Any]] = [{"op": "remove", "path": _pointer(path, key)} for key in old if key not in new]
    for key, value in new.items():
        pointer = _pointer(path, key)
        if key not in old:
            ops.append({"op": "add", "path": pointer, "value": value})
        elif isinstance(value, dict) and isinstance(old[key], dict):
            ops += json_patch(old[key], value, pointer)
        elif old[key] != value:
            ops.append({"op": "replace", "path": pointer, "value": value})
    return ops


def _pointer(path: str, key: str) -> str:
    return f"{path}/{key.replace('~', '~0').replace('/', '~1')}"


def build_app(defaults: InjectOptions) -> web.Application:
    """POST /mutate (the webhook) and GET /healthz (its probes)."""

    async def mutate(request: web.Request) -> web.Response:
        try:
            decision = decide(json.loads(await request.read()), defaults)
        except (ValueError, MalformedReview) as error:  # JSON and UTF-8 errors are ValueErrors too
            log.warning("malformed AdmissionReview from %s: %s", request.remote, error)
            return web.Response(status=400, text=f"malformed AdmissionReview: {error}\n")
        log.info("pod %s: %s", decision.pod, decision.outcome)
        return web.json_response(decision.review)

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application(client_max_size=MAX_REVIEW_BYTES)
    app.router.add_post("/mutate", mutate)
    app.router.add_get("/healthz", healthz)
    return app


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server context (TLS 1.2+) with the certificate chain; OSError/ssl.SSLError when the files are bad."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


@dataclass
class Injector:
    """The webhook server: `start()` binds `listen` with TLS, `stop()` closes it."""

    defaults: InjectOptions
    listen: Address
    cert: Path
    key: Path
    port: int = 0
    _context: ssl.SSLContext | None = field(default=None, repr=False)
    _stamp: tuple[float, float] = field(default=(0.0, 0.0), repr=False)
    _runner: web.AppRunner | None = field(default=None, repr=False)
    _watcher: asyncio.Task[None] | None = field(default=None, repr=False)

    async def start(self) -> None:
        self._context = tls_context(self.cert, self.key)
        self._stamp = self._mtimes()
        self._runner = web.AppRunner(build_app(self.defaults), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.listen.host, self.listen.port, ssl_context=self._context)
        await site.start()
        self.port = int(self._runner.addresses[0][1]) if self._runner.addresses else self.listen.port
        self._watcher = asyncio.get_running_loop().create_task(self._watch_certificate())
        log.info("injector listening on https://%s:%s/mutate", self.listen.host, self.port)

    def reload_certificate(self) -> bool:
        """Load the certificate files again if they changed since last time; True if they were loaded."""
        stamp = self._mtimes()
        if self._context is None or stamp == self._stamp:
            return False
        try:
            self._context.load_cert_chain(self.cert, self.key)  # new handshakes use it; open connections keep theirs
        except (OSError, ssl.SSLError) as error:  # e.g. caught between writing the certificate and the key
            log.warning("could not reload the TLS certificate (keeping the current one): %s", error)
            return False
        self._stamp = stamp
        log.info("reloaded the TLS certificate from %s", self.cert)
        return True

    def _mtimes(self) -> tuple[float, float]:
        try:
            return self.cert.stat().st_mtime, self.key.stat().st_mtime
        except OSError:
            return self._stamp

    async def _watch_certificate(self) -> None:
        while True:
            await asyncio.sleep(CERT_CHECK_INTERVAL)
            self.reload_certificate()

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        if self._runner is not None:
            await self._runner.cleanup()
