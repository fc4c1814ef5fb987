"""KubeFoundry's deployment routes for the KAITO provider: validation, Workspace, status.

The rules are the real backend's (v0.2), including its surprises, because the
orchestrator must cope with them: unknown provider and malformed JSON are 500s, a GET
turns every failure into 404, and the phase is Running only when WorkspaceSucceeded and
InferenceReady are both True, Pending otherwise; a Workspace being deleted keeps the phase
its conditions give (Running, beside WorkspaceDeleting=True, when it was ready). Logs of a
pod whose container has not started are a 500, as the Kubernetes API refuses them.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from .._kube import JSON, KubeError
from ..models import catalog
from . import providers
from .errors import STATE_KEY, ApiError, zod_error, zod_type
from .installation import KUBE_KEY, PROVIDERS

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
NAME_MESSAGE = "Name must be a valid Kubernetes resource name (lowercase alphanumeric and hyphens)"
QUERY_NAMESPACE_MESSAGE = (
    "Namespace must be lowercase alphanumeric with hyphens, starting and ending with alphanumeric"
)
QUERY_NAME_MESSAGE = (
    "Name must be lowercase alphanumeric with hyphens/dots, starting and ending with alphanumeric"
)
MODEL_CONFIG_MESSAGE = (
    "Invalid model configuration: premade requires premadeModel, huggingface requires modelId "
    "and ggufFile, vllm requires modelId"
)
MANAGED_SELECTOR = "app.kubernetes.io/managed-by=kubefoundry"
DEFAULT_NAMESPACE = "kaito-workspace"
#: The backend's own namespace (what GET /api/cluster/status reports, recording 02): the
#: routes that address a deployment look there when the query names no namespace.
BACKEND_NAMESPACE = "kubefoundry-system"
PRIMARY = {"kind": "Workspace", "apiVersion": "kaito.sh/v1beta1"}
LLAMACPP_PORT = 5000


def workspaces_path(namespace: str) -> str:
    return f"/apis/kaito.sh/v1beta1/namespaces/{namespace}/workspaces"


# ---------------------------------------------------------------------------- request validation


def parse_body(raw: str) -> Any:
    """Bun's JSON.parse errors, which KubeFoundry passes through as a 500."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        if exc.pos >= len(raw.rstrip()):
            raise ApiError(500, "JSON Parse error: Unexpected EOF") from None
        raise ApiError(500, f"JSON Parse error: Unrecognized token '{raw[exc.pos]}'") from None


def _issues(body: JSON) -> list[str]:
    """The KAITO zod schema's issues as ``path: message``, in field order."""
    issues: list[str] = []
    name = body.get("name")
    if name is None:
        issues.append("name: Required")
    elif not isinstance(name, str):
        issues.append(f"name: Expected string, received {zod_type(name)}")
    else:
        if not name:
            issues.append("name: Name is required")
        elif len(name) > 63:
            issues.append("name: Name must be 63 characters or less")
        if name and not DNS_LABEL.match(name):
            issues.append(f"name: {NAME_MESSAGE}")
    namespace = body.get("namespace", DEFAULT_NAMESPACE)
    if not isinstance(namespace, str) or not DNS_LABEL.match(namespace) or len(namespace) > 63:
        issues.append("namespace: Namespace must be a valid Kubernetes namespace name")
    for field, allowed in (
        ("modelSource", ("premade", "huggingface", "vllm")),
        ("computeType", ("cpu", "gpu")),
        ("ggufRunMode", ("build", "direct")),
    ):
        value = body.get(field)
        if value is not None and value not in allowed:
            options = " | ".join(f"'{a}'" for a in allowed)
            issues.append(f"{field}: Invalid enum value. Expected {options}, received '{value}'")
    replicas = body.get("replicas", 1)
    if isinstance(replicas, bool) or not isinstance(replicas, (int, float)):
        issues.append(f"replicas: Expected number, received {zod_type(replicas)}")
    elif replicas != int(replicas):
        issues.append("replicas: Expected integer, received float")
    elif replicas < 1:
        issues.append("replicas: Number must be greater than or equal to 1")
    elif replicas > 10:
        issues.append("replicas: Number must be less than or equal to 10")
    if issues:
        return issues
    source = body.get("modelSource", "premade")
    complete = {
        "premade": bool(body.get("premadeModel")),
        "huggingface": bool(body.get("modelId")) and bool(body.get("ggufFile")),
        "vllm": bool(body.get("modelId")),
    }[source]
    return [] if complete else [f": {MODEL_CONFIG_MESSAGE}"]


def validated_config(body: Any) -> JSON:
    """The deployment config, or the ApiError the real backend would answer."""
    if not isinstance(body, dict):
        body = {}
    provider = body.get("provider")
    if not provider:
        raise ApiError(
            400, 'The "provider" field is required. Please specify the runtime (dynamo or kuberay).'
        )
    if provider not in PROVIDERS:
        raise ApiError(
            500, f"Provider '{provider}' not found. Available providers: {', '.join(PROVIDERS)}"
        )
    if provider != "kaito":
        return providers.validated(body, providers.PROVIDERS[provider])
    issues = _issues(body)
    if issues:
        raise ApiError(400, "Validation error: " + ", ".join(issues))
    config = {
        "namespace": DEFAULT_NAMESPACE,
        "modelSource": "premade",
        "computeType": "cpu",
        "replicas": 1,
        **body,
    }
    if config["modelSource"] == "premade" and _premade(config["premadeModel"]) is None:
        raise ApiError(400, f"Validation error: Unknown premade model: {config['premadeModel']}")
    return config


def _premade(model_id: str) -> JSON | None:
    return next((m for m in catalog() if m["id"] == model_id), None)


# ---------------------------------------------------------------------------- the Workspace


def workspace_manifest(config: JSON) -> JSON:
    """The Workspace KubeFoundry creates: ``resource`` and ``inference`` at the top level, no ``spec``."""
    if config["modelSource"] != "premade":
        raise ApiError(500, "Unable to determine image reference for KAITO deployment")
    image = _premade(config["premadeModel"])["image"]  # type: ignore[index]
    gpu = config["computeType"] == "gpu"
    match_labels = config.get("labelSelector") or (
        {"nvidia.com/gpu.present": "true"} if gpu else {"kubernetes.io/os": "linux"}
    )
    return {
        "apiVersion": "kaito.sh/v1beta1",
        "kind": "Workspace",
        "metadata": {
            "name": config["name"],
            "namespace": config["namespace"],
            "labels": {
                "app.kubernetes.io/name": "kubefoundry",
                "app.kubernetes.io/instance": config["name"],
                "app.kubernetes.io/managed-by": "kubefoundry",
                "kubefoundry.io/compute-type": config["computeType"],
                "kubefoundry.io/model-source": config["modelSource"],
                "kubefoundry.io/provider": "kaito",
            },
        },
        "resource": {
            "count": int(config["replicas"]),
            "labelSelector": {"matchLabels": match_labels},
        },
        "inference": {
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "model",
                            "image": image,
                            "args": ["run", f"--address=:{LLAMACPP_PORT}"],
                            "ports": [{"containerPort": LLAMACPP_PORT, "protocol": "TCP"}],
                        }
                    ]
                }
            }
        },
    }


def deployment_status(ws: JSON) -> JSON:
    """DeploymentStatus exactly as the backend derives it from a Workspace (pods are not consulted)."""
    meta = ws.get("metadata", {})
    labels = meta.get("labels") or {}
    containers = ws.get("inference", {}).get("template", {}).get("spec", {}).get("containers") or [
        {}
    ]
    image = containers[0].get("image", "")
    model_id = image
    if labels.get("kubefoundry.io/model-source") == "premade":
        model_id = next((m["modelName"] for m in catalog() if m["image"] == image), image)
    raw_conditions = ws.get("status", {}).get("conditions") or []
    true_types = {c.get("type") for c in raw_conditions if c.get("status") == "True"}
    running = {"WorkspaceSucceeded", "InferenceReady"} <= true_types
    desired = ws.get("resource", {}).get("count") or 1
    ready = desired if running else 0
    conditions = []
    for c in raw_conditions:
        cond = {"type": c.get("type", ""), "status": c.get("status", "Unknown")}
        for key in ("reason", "message", "lastTransitionTime"):
            if c.get(key) is not None:
                cond[key] = c[key]
        conditions.append(cond)
    name = meta.get("name", "unknown")
    return {
        "name": name,
        "namespace": meta.get("namespace", "default"),
        "modelId": model_id,
        "servedModelName": name,
        "engine": "llamacpp",
        "mode": "aggregated",
        "phase": "Running" if running else "Pending",
        "provider": "kaito",
        "replicas": {"desired": desired, "ready": ready, "available": ready},
        "conditions": conditions,
        "pods": [],
        "createdAt": meta.get("creationTimestamp", ""),
        "frontendService": f"{name}:80",
    }


# ---------------------------------------------------------------------------- routes


def _query_namespace(request: web.Request) -> str | web.Response:
    namespace = request.query.get("namespace")
    if namespace is None:
        # Not the KAITO default: the real backend resolves a missing namespace to its own
        # default, so a client that leaves it out finds nothing of KAITO's.
        return BACKEND_NAMESPACE
    if not DNS_LABEL.match(namespace) or len(namespace) > 63:
        return zod_error("namespace", QUERY_NAMESPACE_MESSAGE)
    return namespace


def _path_name(request: web.Request) -> str | web.Response:
    name = request.match_info["name"]
    if not DNS_NAME.match(name) or len(name) > 253:
        return zod_error("name", QUERY_NAME_MESSAGE)
    return name


def _name_and_namespace(request: web.Request) -> tuple[str, str] | web.Response:
    name = _path_name(request)
    if isinstance(name, web.Response):
        return name
    namespace = _query_namespace(request)
    if isinstance(namespace, web.Response):
        return namespace
    return name, namespace


def _manifest_for(request: web.Request, config: JSON) -> tuple[str, JSON]:
    """The collection to POST to and the custom resource, for any provider."""
    provider = config.get("provider", "kaito")
    if provider == "kaito":
        return workspaces_path(config["namespace"]), workspace_manifest(config)
    other = providers.PROVIDERS[provider]
    defects = request.app[STATE_KEY].faults.defects
    return other.collection(config["namespace"]), providers.manifest(config, other, defects)


async def create(request: web.Request) -> web.Response:
    config = validated_config(parse_body(await request.text()))
    collection, manifest = _manifest_for(request, config)
    kube = request.app[KUBE_KEY]
    if config["provider"] != "kaito":
        # The API server answers 404 for a namespace that does not exist (the test
        # cluster does not check, so the stand-in asks).
        if await kube.get_or_none(f"/api/v1/namespaces/{config['namespace']}") is None:
            raise ApiError(
                404, f'Failed to create deployment: namespaces "{config["namespace"]}" not found'
            )
    try:
        await kube.request("POST", collection, body=manifest)
    except KubeError as exc:
        status = exc.status if exc.status in (404, 409, 422) else 500
        raise ApiError(status, f"Failed to create deployment: {exc.message}") from None
    return web.json_response(
        {
            "message": "Deployment created successfully",
            "name": config["name"],
            "namespace": config["namespace"],
            "provider": config["provider"],
        },
        status=201,
    )


async def preview(request: web.Request) -> web.Response:
    config = validated_config(parse_body(await request.text()))
    _, manifest = _manifest_for(request, config)
    primary = {"kind": manifest["kind"], "apiVersion": manifest["apiVersion"]}
    return web.json_response(
        {
            "resources": [{**primary, "name": config["name"], "manifest": manifest}],
            "primaryResource": primary,
        }
    )


async def list_deployments(request: web.Request) -> web.Response:
    namespace = request.query.get("namespace")
    if namespace is not None and (not DNS_LABEL.match(namespace) or len(namespace) > 63):
        return zod_error("namespace", QUERY_NAMESPACE_MESSAGE)
    namespaces = [namespace] if namespace else [p["defaultNamespace"] for p in PROVIDERS.values()]
    items: list[JSON] = []
    for ns in namespaces:
        try:
            listing = await request.app[KUBE_KEY].get(
                workspaces_path(ns), {"labelSelector": MANAGED_SELECTOR}
            )
        except KubeError:
            continue  # the real backend answers 200 with what it could read
        items.extend(listing.get("items", []))
    deployments = [deployment_status(ws) for ws in items]
    defects = request.app[STATE_KEY].faults.defects
    for ns in namespaces:
        for other in providers.LOOKUP:
            try:
                listing = await request.app[KUBE_KEY].get(other.collection(ns))
            except KubeError:
                continue
            deployments += [
                providers.deployment_status(obj, other, defects) for obj in listing.get("items", [])
            ]
    deployments.sort(key=lambda d: d["createdAt"], reverse=True)
    offset = _int(request.query.get("offset"), 0)
    limit = _int(request.query.get("limit"), len(deployments))
    page = deployments[offset : offset + limit]
    return web.json_response(
        {
            "deployments": page,
            "pagination": {
                "total": len(deployments),
                "limit": len(page) if "limit" not in request.query else limit,
                "offset": offset,
                "hasMore": offset + len(page) < len(deployments),
            },
        }
    )


def _int(value: str | None, default: int) -> int:
    try:
        return max(0, int(value)) if value is not None else default
    except ValueError:
        return default


async def _workspace(request: web.Request, name: str, namespace: str) -> JSON:
    return await request.app[KUBE_KEY].get(f"{workspaces_path(namespace)}/{name}")


async def get_deployment(request: web.Request) -> web.Response:
    target = _name_and_namespace(request)
    if isinstance(target, web.Response):
        return target
    kube = request.app[KUBE_KEY]
    try:
        found = await providers.find(kube, *target)
        if found is not None:
            other, obj = found
            defects = request.app[STATE_KEY].faults.defects
            return web.json_response(providers.deployment_status(obj, other, defects))
        ws = await _workspace(request, *target)
    except Exception:
        raise ApiError(404, "Deployment not found") from None
    return web.json_response(deployment_status(ws))


async def manifest(request: web.Request) -> web.Response:
    target = _name_and_namespace(request)
    if isinstance(target, web.Response):
        return target
    try:
        ws = await _workspace(request, *target)
    except KubeError:
        raise ApiError(404, "Deployment not found") from None
    return web.json_response(
        {"resources": [{**PRIMARY, "name": target[0], "manifest": ws}], "primaryResource": PRIMARY}
    )


async def delete_deployment(request: web.Request) -> web.Response:
    target = _name_and_namespace(request)
    if isinstance(target, web.Response):
        return target
    name, namespace = target
    deleted = False
    if request.app[STATE_KEY].faults.delete_noop:
        return web.json_response({"message": "Deployment deleted successfully"})
    try:
        found = await providers.find(request.app[KUBE_KEY], name, namespace)
        path = (
            found[0].path(namespace, name)
            if found is not None
            else f"{workspaces_path(namespace)}/{name}"
        )
        deleted = await request.app[KUBE_KEY].delete(path)
    except KubeError as exc:
        raise ApiError(500, f"Failed to delete deployment: {exc.message}") from None
    if not deleted:
        raise ApiError(404, f"Deployment '{name}' not found in namespace '{namespace}'")
    return web.json_response({"message": "Deployment deleted successfully"})


async def _pods(request: web.Request, name: str, namespace: str) -> list[JSON]:
    """The backend's search: by instance label, KAITO workspace, app, then ray.io/cluster prefix."""
    defects = request.app[STATE_KEY].faults.defects
    return await providers.find_pods(request.app[KUBE_KEY], name, namespace, defects)


async def pods(request: web.Request) -> web.Response:
    target = _name_and_namespace(request)
    if isinstance(target, web.Response):
        return target
    try:
        items = await _pods(request, *target)
    except KubeError as exc:
        raise ApiError(500, f"Failed to get pods: {exc.message}") from None
    out = []
    for pod in items:
        statuses = pod.get("status", {}).get("containerStatuses") or []
        out.append(
            {
                "name": pod["metadata"]["name"],
                "phase": pod.get("status", {}).get("phase", "Unknown"),
                "ready": bool(statuses) and all(s.get("ready") for s in statuses),
                "restarts": sum(s.get("restartCount", 0) for s in statuses),
                "node": pod.get("spec", {}).get("nodeName"),
            }
        )
    return web.json_response({"pods": out})


async def logs(request: web.Request) -> web.Response:
    target = _name_and_namespace(request)
    if isinstance(target, web.Response):
        return target
    name, namespace = target
    items = await _pods(request, name, namespace)
    if not items:
        return web.json_response(
            {"logs": "", "podName": "", "message": "No pods found for this deployment"}
        )
    names = [p["metadata"]["name"] for p in items]
    pod_name = request.query.get("podName") or names[0]
    if pod_name not in names:
        raise ApiError(400, f"Pod '{pod_name}' is not part of deployment '{name}'")
    query = {
        "container": request.query.get("container"),
        "tailLines": request.query.get("tailLines"),
        "timestamps": request.query.get("timestamps"),
    }
    try:
        text = await request.app[KUBE_KEY].text(
            f"/api/v1/namespaces/{namespace}/pods/{pod_name}/log", query
        )
    except KubeError as exc:
        raise ApiError(500, f"Failed to get logs for pod {pod_name}: {exc.message}") from None
    return web.json_response({"logs": text, "podName": pod_name})


async def pending_reasons(request: web.Request) -> web.Response:
    target = _name_and_namespace(request)
    if isinstance(target, web.Response):
        return target
    return web.json_response({"reasons": []})


async def metrics(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "available": False,
            "error": "Metrics are only available when KubeFoundry is deployed inside the Kubernetes cluster. "
            "Run KubeFoundry in-cluster to access deployment metrics.",
            "timestamp": datetime.now(UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "metrics": [],
            "runningOffCluster": True,
        }
    )


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/deployments", create)
    app.router.add_post("/api/deployments/preview", preview)
    app.router.add_get("/api/deployments", list_deployments)
    app.router.add_get("/api/deployments/{name}", get_deployment)
    app.router.add_delete("/api/deployments/{name}", delete_deployment)
    app.router.add_get("/api/deployments/{name}/manifest", manifest)
    app.router.add_get("/api/deployments/{name}/pods", pods)
    app.router.add_get("/api/deployments/{name}/logs", logs)
    app.router.add_get("/api/deployments/{name}/pending-reasons", pending_reasons)
    app.router.add_get("/api/deployments/{name}/metrics", metrics)
