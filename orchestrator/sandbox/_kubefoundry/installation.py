"""KAITO installation as KubeFoundry does it, minus helm: the same checks and the same answers.

Instead of ``helm upgrade --install`` and ``kubectl apply -f <URL>``, the stand-in creates
through the Kubernetes API what those would create (the namespace, the CRDs, a helm
release Secret and the operator pod), and, like the real route, does not wait for them.
"""

from __future__ import annotations

import asyncio
import weakref
from pathlib import Path
from typing import Any

from aiohttp import web

from .._kube import JSON, Kube, KubeError, manifests
from . import providers
from .errors import STATE_KEY, ApiError

KUBE_KEY: web.AppKey[Kube] = web.AppKey("kube", Kube)
CRD_DIR_KEY: web.AppKey[str] = web.AppKey("crd_dir", str)
#: Directories of the real KubeRay and Dynamo CRDs, by provider id ("" or absent: built-in ones).
PROVIDER_CRDS_KEY: web.AppKey[dict[str, str]] = web.AppKey("provider_crds", dict)

KAITO_VERSION = "0.8.0"
OPERATOR_NAMESPACE = "kaito-workspace"
OPERATOR_SELECTOR = "app.kubernetes.io/name=kaito-workspace"
HELM_VERSION = "v3.19.0+sandbox"

PROVIDERS = {
    "dynamo": {
        "name": "NVIDIA Dynamo",
        "defaultNamespace": "dynamo-system",
        "description": "NVIDIA Dynamo is a high-performance inference serving platform for LLMs with "
        "support for KV cache routing and disaggregated serving.",
        "missing": "Dynamo CRD not found. Please install the Dynamo operator.",
    },
    "kuberay": {
        "name": "Ray Serve via KubeRay",
        "defaultNamespace": "kuberay-system",
        "description": "KubeRay enables Ray Serve on Kubernetes for scalable LLM inference with vLLM "
        "backend, supporting both aggregated and disaggregated (P/D) serving modes.",
        "missing": "KubeRay CRD not found. Please install the KubeRay operator.",
    },
    "kaito": {
        "name": "KAITO",
        "defaultNamespace": "kaito-workspace",
        "description": "Flexible inference with GGUF (llama.cpp) and vLLM support. Deploy models on CPU "
        "or GPU nodes.",
        "missing": "KAITO CRD not found. Please install the KAITO operator.",
    },
}

_KAITO_CRDS = f"https://raw.githubusercontent.com/kaito-project/kaito/v{KAITO_VERSION}/charts/kaito/workspace/crds"
_KARPENTER_CRDS = "https://raw.githubusercontent.com/kubernetes-sigs/karpenter/main/pkg/apis/crds"
INSTALLATION_STEPS = [
    {
        "title": "Add KAITO Helm Repository",
        "command": "helm repo add kaito https://kaito-project.github.io/kaito/charts/kaito",
        "description": "Add the KAITO Helm repository.",
    },
    {
        "title": "Update Helm Repositories",
        "command": "helm repo update",
        "description": "Update local Helm repository cache.",
    },
    {
        "title": "Apply Karpenter CRDs",
        "command": f"kubectl apply -f {_KARPENTER_CRDS}/karpenter.sh_nodeclaims.yaml "
        f"-f {_KARPENTER_CRDS}/karpenter.sh_nodepools.yaml",
        "description": "Apply Karpenter CRDs (NodeClaim, NodePool). KAITO requires these CRDs even when Node "
        "Auto-Provisioning is disabled.",
    },
    {
        "title": "Apply KAITO CRDs",
        "command": f"kubectl apply -f {_KAITO_CRDS}/kaito.sh_workspaces.yaml -f {_KAITO_CRDS}/kaito.sh_inferencesets.yaml",
        "description": "Apply KAITO-specific CRDs. We skip bundled CRDs to avoid conflicts with NVIDIA GPU Operator.",
    },
    {
        "title": "Install KAITO Workspace Operator",
        "command": f"helm upgrade --install kaito-workspace kaito/workspace --version {KAITO_VERSION} -n kaito-workspace "
        "--create-namespace --skip-crds --set featureGates.disableNodeAutoProvisioning=true "
        "--set localCSIDriver.useLocalCSIDriver=false --set gpu-feature-discovery.enabled=false --wait",
        "description": f"Install the KAITO workspace operator v{KAITO_VERSION} with --skip-crds (CRDs applied "
        "separately). Node Auto-Provisioning disabled (BYO nodes mode). Local CSI Driver and GPU "
        "Feature Discovery are disabled as they're provided by the NVIDIA GPU Operator.",
    },
]
HELM_COMMANDS = [
    "helm repo add kaito https://kaito-project.github.io/kaito/charts/kaito",
    "helm repo update",
    f"helm install kaito-workspace kaito/workspace --namespace kaito-workspace --create-namespace --version {KAITO_VERSION}",
]

# The CRD files KubeFoundry applies, in its order.
CRD_FILES = [
    "karpenter.sh_nodeclaims.yaml",
    "karpenter.sh_nodepools.yaml",
    "kaito.sh_workspaces.yaml",
    "kaito.sh_inferencesets.yaml",
]

# Used when no directory of real CRDs is given: enough for Workspaces to be stored and watched.
BUILTIN_WORKSPACE_CRD = providers.builtin_crd(
    "kaito.sh",
    "Workspace",
    "workspaces",
    "v1beta1",
    shortNames=["wk", "wks"],
    categories=["workspace"],
)


async def kaito_status(kube: Kube) -> JSON:
    """``installed = crdFound && operatorRunning``, checked the way KubeFoundry checks them."""
    crd_found = False
    try:
        await kube.get(
            f"/apis/kaito.sh/v1beta1/namespaces/{OPERATOR_NAMESPACE}/workspaces", {"limit": 1}
        )
        crd_found = True
    except KubeError:
        pass
    operator_running = False
    try:
        pods = await kube.get(
            f"/api/v1/namespaces/{OPERATOR_NAMESPACE}/pods", {"labelSelector": OPERATOR_SELECTOR}
        )
        operator_running = any(
            p.get("status", {}).get("phase") == "Running" for p in pods.get("items", [])
        )
        if not operator_running:
            pods = await kube.get(f"/api/v1/namespaces/{OPERATOR_NAMESPACE}/pods")
            operator_running = any(
                p.get("status", {}).get("phase") == "Running"
                and ("kaito" in p["metadata"]["name"] or "workspace" in p["metadata"]["name"])
                for p in pods.get("items", [])
            )
    except KubeError:
        pass
    installed = crd_found and operator_running
    if installed:
        message = "KAITO is installed and running"
    elif not crd_found:
        message = PROVIDERS["kaito"]["missing"]
    else:
        message = "KAITO operator is not running"
    return {
        "installed": installed,
        "crdFound": crd_found,
        "operatorRunning": operator_running,
        "message": message,
    }


def other_provider_status(provider: str) -> JSON:
    return {
        "installed": False,
        "crdFound": False,
        "operatorRunning": False,
        "message": PROVIDERS[provider]["missing"],
    }


async def provider_status(request: web.Request) -> web.Response:
    provider = request.match_info["id"]
    if provider not in PROVIDERS:
        raise ApiError(404, f"Provider not found: {provider}")
    kube = request.app[KUBE_KEY]
    if provider == "kaito":
        status, steps, commands = await kaito_status(kube), INSTALLATION_STEPS, HELM_COMMANDS
    else:
        other = providers.PROVIDERS[provider]
        status = await providers.status(kube, other)
        steps, commands = providers.installation_steps(other), providers.helm_commands(other)
    return web.json_response(
        {
            "providerId": provider,
            "providerName": PROVIDERS[provider]["name"],
            **status,
            "installationSteps": steps,
            "helmCommands": commands,
        }
    )


async def any_provider_status(kube: Kube, provider: str) -> JSON:
    """``installed``, ``crdFound``, ``operatorRunning`` and ``message`` of any provider."""
    if provider == "kaito":
        return await kaito_status(kube)
    return await providers.status(kube, providers.PROVIDERS[provider])


async def helm_status(request: web.Request) -> web.Response:
    return web.json_response({"available": True, "version": HELM_VERSION})


#: Helm takes a lock on its release: two installs at once run one after the other (the
#: second then finds KAITO installed) instead of racing on the same CRDs.
_INSTALL_LOCKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


async def install_provider(request: web.Request) -> web.Response:
    lock = _INSTALL_LOCKS.setdefault(asyncio.get_running_loop(), asyncio.Lock())
    async with lock:
        return await _install_provider(request)


async def _install_provider(request: web.Request) -> web.Response:
    provider = request.match_info["id"]
    if provider not in PROVIDERS:
        raise ApiError(404, f"Provider not found: {provider}")
    kube = request.app[KUBE_KEY]
    if provider != "kaito":
        answer = await providers.install(
            kube,
            providers.PROVIDERS[provider],
            request.app[PROVIDER_CRDS_KEY].get(provider, ""),
            request.app[STATE_KEY].faults.install_fails,
        )
        return web.json_response(answer)
    if (await kaito_status(kube))["installed"]:
        return web.json_response(
            {"success": True, "message": "KAITO is already installed", "alreadyInstalled": True}
        )

    results: list[JSON] = [
        _step("repo-add-kaito", '"kaito" has been added to your repositories\n'),
        _step(
            "repo-update",
            "Hang tight while we grab the latest from your chart repositories...\n"
            '...Successfully got an update from the "kaito" chart repository\n'
            "Update Complete. ⎈Happy Helming!⎈\n",
        ),
    ]
    applied: list[JSON] = []
    for filename, docs in _crd_documents(request.app[CRD_DIR_KEY]):
        lines = [await _apply_crd(kube, doc) for doc in docs]
        results.append(_step(f"apply-crd-{filename}", "".join(lines)))
        applied += docs
    # A real install takes seconds (helm), so its CRDs are served by the time it answers;
    # without this wait, the status read right after could say crdFound false.
    await providers.wait_crds_served(kube, applied)
    if request.app[STATE_KEY].faults.install_fails:
        stderr = (
            "Error: INSTALLATION FAILED: failed pre-install: timed out waiting for the condition\n"
        )
        raise ApiError(500, f'Installation failed at step "install-kaito-workspace": {stderr}')
    await _install_operator(kube)
    results.append(
        _step(
            "install-kaito-workspace",
            'Release "kaito-workspace" does not exist. Installing it now.\nNAME: kaito-workspace\n'
            "NAMESPACE: kaito-workspace\nSTATUS: deployed\nREVISION: 1\nTEST SUITE: None\n",
        )
    )
    # Helm runs without --wait, so the answer usually comes before the operator pod runs:
    # installed false, and the flow has to wait. ``installing`` is ``!installed``.
    status = await kaito_status(kube)
    installed = bool(status["installed"])
    return web.json_response(
        {
            "success": True,
            "message": "KAITO installed successfully"
            if installed
            else "KAITO installation started. The operator is being deployed - check status for progress.",
            "installing": not installed,
            "installationStatus": status,
            "results": results,
        }
    )


def _step(step: str, output: str) -> JSON:
    return {"step": step, "success": True, "output": output, "error": ""}


def _crd_documents(crd_dir: str) -> list[tuple[str, list[JSON]]]:
    if not crd_dir:
        return [("kaito.sh_workspaces.yaml", [BUILTIN_WORKSPACE_CRD])]
    out = []
    order = {name: i for i, name in enumerate(CRD_FILES)}
    paths = sorted(Path(crd_dir).iterdir(), key=lambda p: (order.get(p.name, len(order)), p.name))
    for path in paths:
        if path.suffix in (".yaml", ".yml", ".json"):
            out.append((path.name, manifests(path)))
    return out


async def _apply_crd(kube: Kube, doc: JSON) -> str:
    collection = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    name = doc["metadata"]["name"]
    if await kube.create(collection, doc) is not None:
        return f"customresourcedefinition.apiextensions.k8s.io/{name} created\n"
    existing = await kube.get(f"{collection}/{name}")
    body: dict[str, Any] = {
        **doc,
        "metadata": {**doc["metadata"], "resourceVersion": existing["metadata"]["resourceVersion"]},
    }
    await kube.request("PUT", f"{collection}/{name}", body=body)
    return f"customresourcedefinition.apiextensions.k8s.io/{name} configured\n"


#: Marks an operator pod that the KAITO stand-in starts ``delays.operator_start`` seconds
#: after it sees it: until then the kubelet holds it in ContainerCreating.
OPERATOR_HOLD = "sandbox.orchestrator/start-after"


async def _install_operator(kube: Kube) -> None:
    """What the chart leaves behind that KubeFoundry looks at: namespace, release Secret, operator pod.

    The pod is held in ContainerCreating and released by the cluster side of the sandbox
    (``OPERATOR_HOLD``), as on a real cluster, where the install answer comes first and the
    operator runs seconds later. The hold is a delay knob read while it runs, so a test can
    keep the operator from starting and then let it go, and a backend restart does not stop
    it from starting.
    """
    ns = OPERATOR_NAMESPACE
    await providers.helm_release(kube, ns, "kaito-workspace")
    existing = await kube.get(f"/api/v1/namespaces/{ns}/pods", {"labelSelector": OPERATOR_SELECTOR})
    if existing.get("items"):
        return
    name, pod_hash = providers.replica_pod_name("kaito-workspace")
    labels = {
        "app.kubernetes.io/name": "kaito-workspace",
        "app.kubernetes.io/instance": "kaito-workspace",
        "pod-template-hash": pod_hash,
    }
    await kube.create(
        f"/api/v1/namespaces/{ns}/pods",
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": ns,
                "labels": labels,
                "annotations": {
                    "fake-kubelet/phase": "Pending",
                    "fake-kubelet/waiting-reason": "ContainerCreating",
                    OPERATOR_HOLD: "delays.operator_start",
                },
            },
            "spec": {
                "containers": [
                    {
                        "name": "manager",
                        "image": f"mcr.microsoft.com/aks/kaito/workspace:{KAITO_VERSION}",
                        "ports": [{"containerPort": 9443, "protocol": "TCP"}],
                    }
                ]
            },
        },
    )
