"""KubeFoundry's KubeRay and Dynamo providers: install, create, status, pods, as the real backend.

The rules are the backend's (main c051360), defects included, because the orchestrator
must report them rather than trust them: Dynamo's ``replicas.ready`` is always 0, a
Dynamo deployment the operator marked ``failed`` shows Pending, Dynamo pods are never
found by ``/pods``, KubeRay pods are matched by a name prefix, ``replicas`` above
``maxReplicas`` is sent as is (and KubeRay clamps it). Each defect is a switch in
``Faults.defects``; switched off, the stand-in answers as a backend without it would.
"""

from __future__ import annotations

import asyncio
import random
import re
import string
from pathlib import Path
from typing import Any

import yaml

from .._kube import JSON, Kube, KubeError, backoff, manifests
from ..faults import Defects
from .errors import ApiError, zod_type

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
PROVIDER_IDS = ("dynamo", "kuberay")
KUBERAY_VERSION = "1.5.1"
DYNAMO_VERSION = "0.7.1"
RAY_IMAGE = "rayproject/ray-llm:2.52.0-py311-cu128"
DYNAMO_IMAGES = {
    "vllm": "nvcr.io/nvidia/ai-dynamo/vllm-runtime",
    "sglang": "nvcr.io/nvidia/ai-dynamo/sglang-runtime",
    "trtllm": "nvcr.io/nvidia/ai-dynamo/tensorrtllm-runtime",
}
WORKER_KEYS = {"vllm": "Vllm", "sglang": "Sglang", "trtllm": "Trtllm"}
DYNAMO_CRDS = [
    "dynamocomponentdeployments.nvidia.com",
    "dynamographdeploymentrequests.nvidia.com",
    "dynamomodels.nvidia.com",
    "dynamographdeployments.nvidia.com",
]


class Provider:
    """One provider's custom resource and operator, as KubeFoundry sees them."""

    def __init__(
        self,
        pid: str,
        title: str,
        name: str,
        group: str,
        version: str,
        plural: str,
        kind: str,
        operator_namespace: str,
        operator_name: str,
    ) -> None:
        self.id = pid
        #: The short name the backend's status messages use ("Dynamo CRD not found").
        self.title = title
        #: The provider's name as the backend lists it ("NVIDIA Dynamo").
        self.name = name
        self.group = group
        self.version = version
        self.plural = plural
        self.kind = kind
        self.operator_namespace = operator_namespace
        self.operator_name = operator_name

    def collection(self, namespace: str) -> str:
        return f"/apis/{self.group}/{self.version}/namespaces/{namespace}/{self.plural}"

    def path(self, namespace: str, name: str) -> str:
        return f"{self.collection(namespace)}/{name}"

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


KUBERAY = Provider(
    "kuberay",
    "KubeRay",
    "Ray Serve via KubeRay",
    "ray.io",
    "v1",
    "rayservices",
    "RayService",
    "kuberay-system",
    "kuberay-operator",
)
DYNAMO = Provider(
    "dynamo",
    "Dynamo",
    "NVIDIA Dynamo",
    "nvidia.com",
    "v1alpha1",
    "dynamographdeployments",
    "DynamoGraphDeployment",
    "dynamo-system",
    "dynamo-operator",
)
PROVIDERS = {"dynamo": DYNAMO, "kuberay": KUBERAY}
#: The order in which GET, DELETE and the manifest route look a name up.
LOOKUP = (DYNAMO, KUBERAY)


# ---------------------------------------------------------------------------- installation


async def status(kube: Kube, provider: Provider) -> JSON:
    """``installed = crdFound && operatorRunning``, checked the way KubeFoundry checks them."""
    crd_found = False
    if provider is DYNAMO:
        for crd in DYNAMO_CRDS:
            try:
                await kube.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd}")
                crd_found = True
                break
            except KubeError:
                continue
    else:
        try:
            await kube.get(provider.collection(provider.operator_namespace), {"limit": 1})
            crd_found = True
        except KubeError:
            pass
    operator_running = False
    selectors = [f"app.kubernetes.io/name={provider.operator_name}"]
    if provider is KUBERAY:
        selectors.append(f"app={provider.operator_name}")
    for selector in selectors:
        try:
            pods = await kube.get(
                f"/api/v1/namespaces/{provider.operator_namespace}/pods",
                {"labelSelector": selector},
            )
        except KubeError:
            continue
        if any(p.get("status", {}).get("phase") == "Running" for p in pods.get("items", [])):
            operator_running = True
            break
    installed = crd_found and operator_running
    if installed:
        message = f"{provider.title} is installed and running"
    elif not crd_found:
        message = f"{provider.title} CRD not found. Please install the {provider.title} operator."
    else:
        message = f"{provider.title} operator is not running"
    return {
        "installed": installed,
        "crdFound": crd_found,
        "operatorRunning": operator_running,
        "message": message,
    }


def installation_steps(provider: Provider) -> list[JSON]:
    if provider is KUBERAY:
        return [
            {
                "title": "Add KubeRay Helm Repository",
                "command": "helm repo add kuberay https://ray-project.github.io/kuberay-helm/",
                "description": "Add the KubeRay Helm repository.",
            },
            {
                "title": "Install KubeRay Operator",
                "command": "helm install kuberay-operator kuberay/kuberay-operator "
                f"--namespace kuberay-system --create-namespace --version {KUBERAY_VERSION}",
                "description": "Install the KubeRay operator, which manages RayServices.",
            },
        ]
    base = "https://helm.ngc.nvidia.com/nvidia/ai-dynamo/charts"
    return [
        {
            "title": "Fetch and Install Dynamo CRDs",
            "command": f"helm fetch {base}/dynamo-crds-{DYNAMO_VERSION}.tgz && helm install "
            f"dynamo-crds dynamo-crds-{DYNAMO_VERSION}.tgz --namespace default",
            "description": "Install the Dynamo Custom Resource Definitions.",
        },
        {
            "title": "Fetch and Install Dynamo Platform",
            "command": f"helm fetch {base}/dynamo-platform-{DYNAMO_VERSION}.tgz && helm install "
            f"dynamo-platform dynamo-platform-{DYNAMO_VERSION}.tgz --namespace dynamo-system "
            "--create-namespace",
            "description": "Install the Dynamo platform which manages inference deployments.",
        },
    ]


def helm_commands(provider: Provider) -> list[str]:
    return [step["command"] for step in installation_steps(provider)]


def _step(step: str, output: str) -> JSON:
    return {"step": step, "success": True, "output": output, "error": ""}


def _release_output(release: str, namespace: str) -> str:
    return (
        f'Release "{release}" does not exist. Installing it now.\nNAME: {release}\n'
        f"NAMESPACE: {namespace}\nSTATUS: deployed\nREVISION: 1\nTEST SUITE: None\n"
    )


async def install(kube: Kube, provider: Provider, crd_dir: str, fails: bool) -> JSON:
    """What the helm charts leave behind (CRDs, namespace, release Secret, operator pod),
    created through the Kubernetes API without waiting for any of it, as helm without --wait."""
    if (await status(kube, provider))["installed"]:
        return {
            "success": True,
            "message": f"{provider.name} is already installed",
            "alreadyInstalled": True,
        }
    results: list[JSON] = []
    if provider is KUBERAY:
        results += [
            _step("repo-add-kuberay", '"kuberay" has been added to your repositories\n'),
            _step(
                "repo-update",
                "Hang tight while we grab the latest from your chart repositories...\n"
                '...Successfully got an update from the "kuberay" chart repository\n'
                "Update Complete. ⎈Happy Helming!⎈\n",
            ),
        ]
        await _apply_crds(kube, crd_dir, BUILTIN_CRDS["kuberay"])
        release = "kuberay-operator"
    else:
        await _apply_crds(kube, crd_dir, BUILTIN_CRDS["dynamo"])
        results.append(_step("install-dynamo-crds", _release_output("dynamo-crds", "default")))
        release = "dynamo-platform"
    if fails:
        raise ApiError(
            500,
            f'Installation failed at step "install-{release}": Error: INSTALLATION FAILED: '
            "failed pre-install: timed out waiting for the condition\n",
        )
    await _install_operator(kube, provider, release)
    results.append(
        _step(f"install-{release}", _release_output(release, provider.operator_namespace))
    )
    # Helm runs without --wait: the answer usually comes before the operator pod runs.
    current = await status(kube, provider)
    installed = bool(current["installed"])
    return {
        "success": True,
        "message": f"{provider.name} installed successfully"
        if installed
        else f"{provider.name} installation started. The operator is being deployed - "
        "check status for progress.",
        "installing": not installed,
        "installationStatus": current,
        "results": results,
    }


def builtin_crd(group: str, kind: str, plural: str, version: str, **names: list[str]) -> JSON:
    """Enough of a CRD for objects to be stored and watched when no real CRDs are given;
    ``names`` adds to its names (``shortNames``, ``categories``)."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                **names,
            },
            "versions": [
                {
                    "name": version,
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": True,
                        }
                    },
                    "subresources": {"status": {}},
                }
            ],
        },
    }


BUILTIN_CRDS: dict[str, list[JSON]] = {
    "kuberay": [
        builtin_crd("ray.io", "RayService", "rayservices", "v1"),
        builtin_crd("ray.io", "RayCluster", "rayclusters", "v1"),
    ],
    "dynamo": [
        builtin_crd("nvidia.com", "DynamoGraphDeployment", "dynamographdeployments", "v1alpha1")
    ],
}


async def _apply_crds(kube: Kube, crd_dir: str, builtin: list[JSON]) -> None:
    docs = builtin
    if crd_dir:
        docs = []
        for path in sorted(Path(crd_dir).iterdir()):
            if path.suffix in (".yaml", ".yml", ".json"):
                docs += manifests(path)
    collection = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    for doc in docs:
        await kube.create(collection, doc)  # an existing CRD is kept, as helm keeps CRDs
    await wait_crds_served(kube, docs)


async def wait_crds_served(kube: Kube, docs: list[JSON]) -> None:
    """Answer an install only once its CRDs are served, or fail it as helm would.

    helm installs a chart's crds/ first and waits for them before anything else; so does
    the stand-in, or "installed" (or a create right after it) could come before the
    resources are served.
    """
    try:
        async with asyncio.timeout(CRD_SERVED_TIMEOUT):  # not wait_for: see Kube.wait_gone
            await _wait_served(kube, docs)
    except TimeoutError:
        raise ApiError(
            500,
            "Installation failed: Error: INSTALLATION FAILED: CRDs not served within "
            f"{CRD_SERVED_TIMEOUT:.0f} s: timed out waiting for the condition\n",
        ) from None


#: How long an install waits for its CRDs to be served (helm's CRD wait is 60 s).
CRD_SERVED_TIMEOUT = 60.0


async def _wait_served(kube: Kube, docs: list[JSON]) -> None:
    """Until every served version of every CRD in ``docs`` answers a list.

    A CRD is not served the moment it is created: a real API server answers 404 for its
    resources until their handler is up (seconds for the large KubeRay and Dynamo CRDs).
    A read is what says they are served, so this asks, with a short backoff; a CRD that
    already existed answers at once.
    """
    for doc in docs:
        spec = doc.get("spec") or {}
        for version in spec.get("versions") or []:
            if not version.get("served", True):
                continue
            path = f"/apis/{spec['group']}/{version['name']}/{spec['names']['plural']}"
            attempt = 0
            while True:
                try:
                    await kube.get(path, {"limit": 1})
                    break
                except KubeError as exc:
                    if exc.status not in (404, 429, 503):
                        raise
                await asyncio.sleep(backoff(attempt, cap=0.25))
                attempt += 1


async def helm_release(kube: Kube, namespace: str, release: str) -> None:
    """What a chart's install leaves that KubeFoundry looks at before any pod: the
    namespace and helm's release Secret (``sh.helm.release.v1.RELEASE.v1``)."""
    await kube.create(
        "/api/v1/namespaces",
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
    )
    await kube.create(
        f"/api/v1/namespaces/{namespace}/secrets",
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "helm.sh/release.v1",
            "metadata": {
                "name": f"sh.helm.release.v1.{release}.v1",
                "namespace": namespace,
                "labels": {"owner": "helm", "name": release, "status": "deployed", "version": "1"},
            },
        },
    )


def replica_pod_name(deployment: str) -> tuple[str, str]:
    """A name a Deployment's ReplicaSet gives its pod, ``DEPLOYMENT-HASH-XXXXX``, and
    the ``pod-template-hash`` label's value in it."""
    pod_hash = "".join(random.choices(string.hexdigits.lower()[:16], k=10))
    suffix = "".join(random.choices("bcdfghjklmnpqrstvwxz2456789", k=5))
    return f"{deployment}-{pod_hash}-{suffix}", pod_hash


async def _install_operator(kube: Kube, provider: Provider, release: str) -> None:
    ns = provider.operator_namespace
    await helm_release(kube, ns, release)
    selector = f"app.kubernetes.io/name={provider.operator_name}"
    existing = await kube.get(f"/api/v1/namespaces/{ns}/pods", {"labelSelector": selector})
    if existing.get("items"):
        return
    name, pod_hash = replica_pod_name(provider.operator_name)
    image = (
        f"quay.io/kuberay/operator:v{KUBERAY_VERSION}"
        if provider is KUBERAY
        else f"nvcr.io/nvidia/ai-dynamo/kubernetes-operator:{DYNAMO_VERSION}"
    )
    await kube.create(
        f"/api/v1/namespaces/{ns}/pods",
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": ns,
                "labels": {
                    "app.kubernetes.io/name": provider.operator_name,
                    "app.kubernetes.io/instance": release,
                    "pod-template-hash": pod_hash,
                },
            },
            "spec": {"containers": [{"name": "manager", "image": image}]},
        },
    )


# ---------------------------------------------------------------------------- create


def _enum(field: str, value: Any, allowed: tuple[str, ...]) -> str:
    options = " | ".join(f"'{a}'" for a in allowed)
    return f"{field}: Invalid enum value. Expected {options}, received '{value}'"


def _int_issue(field: str, value: Any, low: int, high: int | None) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{field}: Expected number, received {zod_type(value)}"
    if value != int(value):
        return f"{field}: Expected integer, received float"
    if value < low:
        return f"{field}: Number must be greater than or equal to {low}"
    if high is not None and value > high:
        return f"{field}: Number must be less than or equal to {high}"
    return None


def validated(body: JSON, provider: Provider) -> JSON:
    """The deployment config (unknown keys dropped), or the 400 the zod schema gives."""
    issues: list[str] = []
    name = body.get("name")
    if name is None:
        issues.append("name: Required")
    elif not isinstance(name, str):
        issues.append(f"name: Expected string, received {zod_type(name)}")
    elif not name or len(name) > 63 or not DNS_LABEL.match(name):
        issues.append(
            "name: Name must be a valid Kubernetes resource name (lowercase alphanumeric and hyphens)"
        )
    for field in ("namespace", "modelId", "hfTokenSecret"):
        value = body.get(field)
        if value is None:
            issues.append(f"{field}: Required")
        elif not isinstance(value, str) or not value:
            issues.append(f"{field}: Expected string, received {zod_type(value)}")
    engine = body.get("engine")
    if provider is DYNAMO:
        if engine is None:
            issues.append("engine: Required")
        elif engine not in DYNAMO_IMAGES:
            issues.append(_enum("engine", engine, tuple(DYNAMO_IMAGES)))
    elif engine not in (None, "vllm"):
        issues.append('engine: Invalid literal value, expected "vllm"')
    mode = body.get("mode", "aggregated")
    if mode not in ("aggregated", "disaggregated"):
        issues.append(_enum("mode", mode, ("aggregated", "disaggregated")))
    issue = _int_issue("replicas", body.get("replicas", 1), 1, 10)
    if issue:
        issues.append(issue)
    resources = body.get("resources")
    if resources is not None:
        if not isinstance(resources, dict):
            issues.append(f"resources: Expected object, received {zod_type(resources)}")
        else:
            issue = _int_issue("resources.gpu", resources.get("gpu", 1), 1, None)
            if issue:
                issues.append(issue)
    for field in ("minReplicas", "maxReplicas"):
        if provider is KUBERAY and field in body:
            issue = _int_issue(field, body[field], 1, None)
            if issue:
                issues.append(issue)
    if issues:
        raise ApiError(400, "Validation error: " + ", ".join(issues))
    known = {
        "name",
        "namespace",
        "provider",
        "modelId",
        "engine",
        "hfTokenSecret",
        "mode",
        "replicas",
        "resources",
        "servedModelName",
        "contextLength",
        "enforceEager",
        "engineArgs",
        "routerMode",
        "prefillReplicas",
        "decodeReplicas",
        "prefillGpus",
        "decodeGpus",
    }
    if provider is KUBERAY:
        known |= {
            "tensorParallelSize",
            "pipelineParallelSize",
            "gpuMemoryUtilization",
            "maxNumSeqs",
            "rayImage",
            "headCpu",
            "headMemory",
            "workerCpu",
            "workerMemory",
            "minReplicas",
            "maxReplicas",
            "kvConnector",
        }
    config = {k: v for k, v in body.items() if k in known}
    config.setdefault("mode", "aggregated")
    config.setdefault("replicas", 1)
    if provider is KUBERAY:
        config.setdefault("engine", "vllm")
    return config


def _labels(config: JSON, provider: Provider) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "kubefoundry",
        "app.kubernetes.io/instance": config["name"],
        "app.kubernetes.io/managed-by": "kubefoundry",
        "kubefoundry.io/provider": provider.id,
    }


def manifest(config: JSON, provider: Provider, defects: Defects) -> JSON:
    if provider is KUBERAY:
        return _rayservice(config, defects)
    return _dgd(config)


def _rayservice(config: JSON, defects: Defects) -> JSON:
    model_id = config.get("servedModelName") or config["modelId"]
    engine_kwargs = {
        "tensor_parallel_size": config.get("tensorParallelSize") or 1,
        "pipeline_parallel_size": config.get("pipelineParallelSize") or 1,
        "gpu_memory_utilization": config.get("gpuMemoryUtilization") or 0.9,
        "dtype": "auto",
        "max_num_seqs": config.get("maxNumSeqs") or 40,
        "max_model_len": config.get("contextLength") or 16384,
        "enforce_eager": config.get("enforceEager", True),
    }
    low = int(config.get("minReplicas") or 1)
    high = int(config.get("maxReplicas") or 2)
    replicas = int(config["replicas"])
    if not defects.kuberay_clamps_replicas:
        high = max(high, replicas)
    loading = {"model_id": model_id, "model_source": config["modelId"]}
    llm = {
        "model_loading_config": loading,
        "deployment_config": {"autoscaling_config": {"min_replicas": low, "max_replicas": high}},
        "engine_kwargs": engine_kwargs,
    }
    if config["mode"] == "disaggregated":
        app = {
            "name": "pd-disaggregation",
            "import_path": "ray.serve.llm:build_pd_openai_app",
            "route_prefix": "/",
            "args": {"prefill_config": llm, "decode_config": llm},
        }
        groups = ["prefill-group", "decode-group"]
    else:
        app = {
            "name": "llm_app",
            "import_path": "ray.serve.llm:build_openai_app",
            "route_prefix": "/",
            "runtime_env": {"env_vars": {"VLLM_USE_V1": "1"}},
            "args": {"llm_configs": [llm]},
        }
        groups = ["gpu-group"]
    image = config.get("rayImage") or RAY_IMAGE
    env_from = [{"secretRef": {"name": config["hfTokenSecret"]}}]
    head_cpu, head_mem = config.get("headCpu") or "4", config.get("headMemory") or "32Gi"
    worker_cpu, worker_mem = config.get("workerCpu") or "8", config.get("workerMemory") or "64Gi"
    gpus = str((config.get("resources") or {}).get("gpu", 1))
    head_resources = {"cpu": head_cpu, "memory": head_mem}
    worker_resources = {"cpu": worker_cpu, "memory": worker_mem, "nvidia.com/gpu": gpus}
    return {
        "apiVersion": KUBERAY.api_version,
        "kind": KUBERAY.kind,
        "metadata": {
            "name": config["name"],
            "namespace": config["namespace"],
            "labels": _labels(config, KUBERAY),
        },
        "spec": {
            "serveConfigV2": yaml.safe_dump({"applications": [app]}, sort_keys=False),
            "rayClusterConfig": {
                "headGroupSpec": {
                    "rayStartParams": {"num-gpus": "0"},
                    "template": {
                        "spec": {
                            "containers": [
                                {
                                    "name": "ray-head",
                                    "image": image,
                                    "resources": {
                                        "limits": head_resources,
                                        "requests": head_resources,
                                    },
                                    "ports": [
                                        {"containerPort": 6379, "name": "gcs-server"},
                                        {"containerPort": 8265, "name": "dashboard"},
                                        {"containerPort": 10001, "name": "client"},
                                        {"containerPort": 8000, "name": "serve"},
                                    ],
                                    "envFrom": env_from,
                                }
                            ]
                        }
                    },
                },
                "workerGroupSpecs": [
                    {
                        "groupName": group,
                        "replicas": replicas,
                        "minReplicas": low,
                        "maxReplicas": high,
                        "rayStartParams": {},
                        "template": {
                            "spec": {
                                "containers": [
                                    {
                                        "name": "ray-worker",
                                        "image": image,
                                        "resources": {
                                            "limits": worker_resources,
                                            "requests": worker_resources,
                                        },
                                        "envFrom": env_from,
                                    }
                                ],
                                "tolerations": [
                                    {
                                        "key": "nvidia.com/gpu",
                                        "operator": "Exists",
                                        "effect": "NoSchedule",
                                    }
                                ],
                            }
                        },
                    }
                    for group in groups
                ],
            },
        },
    }


def _dgd(config: JSON) -> JSON:
    engine = config["engine"]
    image = f"{DYNAMO_IMAGES[engine]}:{DYNAMO_VERSION}"
    workdir = f"/workspace/examples/backends/{engine}"
    frontend: JSON = {
        "componentType": "frontend",
        "dynamoNamespace": config["name"],
        "replicas": 1,
        "envFromSecret": config["hfTokenSecret"],
        "extraPodSpec": {"mainContainer": {"image": image, "workingDir": workdir}},
    }
    router = config.get("routerMode")
    if router and router != "none":
        frontend["router-mode"] = router  # not in the CRD schema: a real API server drops it
    command = [f"python3 -m dynamo.{engine}", f"--model {config['modelId']}"]
    if config.get("servedModelName"):
        command.append(f"--served-model-name {config['servedModelName']}")
    if config.get("enforceEager"):
        command.append("--enforce-eager")
    if config.get("contextLength"):
        command.append(f"--max-model-len {config['contextLength']}")
    for key, value in (config.get("engineArgs") or {}).items():
        if value is True:
            command.append(f"--{key}")
        elif value is not False:
            command.append(f"--{key} {value}")

    def worker(replicas: int, gpus: Any, role: str | None) -> JSON:
        spec: JSON = {
            "componentType": "worker",
            "dynamoNamespace": config["name"],
            "replicas": replicas,
            "envFromSecret": config["hfTokenSecret"],
        }
        if role:
            spec["subComponentType"] = role
        if gpus is not None:
            spec["resources"] = {"limits": {"gpu": str(gpus)}, "requests": {"gpu": str(gpus)}}
        args = " ".join(command + (["--is-prefill-worker"] if role == "prefill" else []))
        spec["extraPodSpec"] = {
            "mainContainer": {
                "image": image,
                "workingDir": workdir,
                "command": ["/bin/sh", "-c"],
                "args": [args],
            }
        }
        return spec

    key = WORKER_KEYS[engine]
    resources = config.get("resources")
    services: JSON = {"Frontend": frontend}
    if config["mode"] == "disaggregated":
        services[f"{key}PrefillWorker"] = worker(
            int(config.get("prefillReplicas") or 1), config.get("prefillGpus") or 1, "prefill"
        )
        services[f"{key}DecodeWorker"] = worker(
            int(config.get("decodeReplicas") or 1), config.get("decodeGpus") or 1, "decode"
        )
    else:
        gpus = resources.get("gpu", 1) if isinstance(resources, dict) else None
        services[f"{key}Worker"] = worker(int(config["replicas"]), gpus, None)
    return {
        "apiVersion": DYNAMO.api_version,
        "kind": DYNAMO.kind,
        "metadata": {
            "name": config["name"],
            "namespace": config["namespace"],
            "labels": _labels(config, DYNAMO),
        },
        "spec": {"backendFramework": engine, "services": services},
    }


# ---------------------------------------------------------------------------- status


def _conditions(obj: JSON) -> list[JSON]:
    out = []
    for c in obj.get("status", {}).get("conditions") or []:
        cond = {"type": c.get("type", ""), "status": c.get("status", "Unknown")}
        for key in ("reason", "message", "lastTransitionTime"):
            if c.get(key) is not None:
                cond[key] = c[key]
        out.append(cond)
    return out


def deployment_status(obj: JSON, provider: Provider, defects: Defects) -> JSON:
    return _dynamo_status(obj, defects) if provider is DYNAMO else _kuberay_status(obj)


def _dynamo_status(obj: JSON, defects: Defects) -> JSON:
    meta = obj.get("metadata", {})
    name = meta.get("name", "unknown")
    spec = obj.get("spec", {})
    status = obj.get("status", {})
    services = spec.get("services") or {}
    workers = {k: v for k, v in services.items() if v.get("componentType") == "worker"}
    disaggregated = any(v.get("subComponentType") for v in workers.values())
    desired = sum(int(v.get("replicas") or 1) for v in workers.values()) or 1
    ready_condition = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    running = status.get("state") == "successful" or ready_condition
    phase = "Running" if running else "Pending"
    if status.get("state") == "failed" and not defects.dynamo_failed_shows_pending:
        phase = "Failed"
    # The real backend reads status.services[*].ready, which the operator never writes.
    ready = 0 if defects.dynamo_ready_always_zero or not running else desired
    model_id, served = "", ""
    for worker in workers.values():
        args = ((worker.get("extraPodSpec") or {}).get("mainContainer") or {}).get("args") or [""]
        found = re.search(r"--model\s+(\S+)", args[0])
        model_id = found.group(1) if found else ""
        found = re.search(r"--served-model-name\s+(\S+)", args[0])
        served = found.group(1) if found else ""
        break
    result: JSON = {
        "name": name,
        "namespace": meta.get("namespace", "default"),
        "modelId": model_id,
        "servedModelName": served or name,
        "engine": spec.get("backendFramework", "vllm"),
        "mode": "disaggregated" if disaggregated else "aggregated",
        "phase": phase,
        "provider": "dynamo",
        "replicas": {"desired": desired, "ready": ready, "available": ready},
        "conditions": _conditions(obj),
        "pods": [],
        "createdAt": meta.get("creationTimestamp", ""),
        "frontendService": f"{name}-frontend",
    }
    if disaggregated:
        for role in ("prefill", "decode"):
            want = sum(
                int(v.get("replicas") or 1)
                for v in workers.values()
                if v.get("subComponentType") == role
            )
            result[f"{role}Replicas"] = {"desired": want, "ready": 0}
    return result


def _kuberay_status(obj: JSON) -> JSON:
    meta = obj.get("metadata", {})
    name = meta.get("name", "unknown")
    spec = obj.get("spec", {})
    status = obj.get("status", {})
    cluster = (status.get("activeServiceStatus") or {}).get("rayClusterStatus") or {}
    serve = spec.get("serveConfigV2") or ""
    model_source = re.search(r"model_source:\s*[\"']?([^\"'\n]+)[\"']?", serve)
    model_id = re.search(r"model_id:\s*[\"']?([^\"'\n]+)[\"']?", serve)
    groups = (spec.get("rayClusterConfig") or {}).get("workerGroupSpecs") or []
    spec_replicas = sum(int(g.get("replicas") or 0) for g in groups)
    # The backend compares with "Running" exactly; its Failed/Deploying branches test
    # values KubeRay >= 1.3 never writes, so every other value is Pending.
    phase = "Running" if status.get("serviceStatus") == "Running" else "Pending"
    available = int(cluster.get("availableWorkerReplicas") or 0)
    return {
        "name": name,
        "namespace": meta.get("namespace", "default"),
        "modelId": model_source.group(1).strip() if model_source else "",
        "servedModelName": model_id.group(1).strip() if model_id else name,
        "engine": "vllm",
        "mode": "disaggregated" if "pd-disaggregation" in serve else "aggregated",
        "phase": phase,
        "provider": "kuberay",
        "replicas": {
            "desired": int(cluster.get("desiredWorkerReplicas") or spec_replicas or 1),
            "ready": available,
            "available": available,
        },
        "conditions": _conditions(obj),
        "pods": [],
        "createdAt": meta.get("creationTimestamp", ""),
        "frontendService": f"{name}-serve-svc",
    }


# ---------------------------------------------------------------------------- lookups


async def find(kube: Kube, name: str, namespace: str) -> tuple[Provider, JSON] | None:
    """The first provider (dynamo, then kuberay) that has a CR of this name; None if none."""
    for provider in LOOKUP:
        try:
            return provider, await kube.get(provider.path(namespace, name))
        except KubeError:
            continue
    return None


async def find_pods(kube: Kube, name: str, namespace: str, defects: Defects) -> list[JSON]:
    """The pods ``/pods`` and ``/logs`` show: the first of the backend's label searches that
    finds any, then any pod whose ``ray.io/cluster`` starts with the name (a prefix)."""
    collection = f"/api/v1/namespaces/{namespace}/pods"
    selectors = [f"app.kubernetes.io/instance={name}", f"kaito.sh/workspace={name}", f"app={name}"]
    if not defects.dynamo_pods_not_found:
        selectors.append(f"nvidia.com/dynamo-graph-deployment-name={name}")
    for selector in selectors:
        items = (await kube.get(collection, {"labelSelector": selector})).get("items", [])
        if items:
            return list(items)
    ray_pods = (await kube.get(collection, {"labelSelector": "ray.io/cluster"})).get("items", [])
    if defects.kuberay_pods_by_prefix:
        return [p for p in ray_pods if p["metadata"]["labels"]["ray.io/cluster"].startswith(name)]
    clusters = set()
    try:
        service = await kube.get(KUBERAY.path(namespace, name))
        for key in ("activeServiceStatus", "pendingServiceStatus"):
            cluster = (service.get("status", {}).get(key) or {}).get("rayClusterName")
            if cluster:
                clusters.add(cluster)
    except KubeError:
        pass
    return [p for p in ray_pods if p["metadata"]["labels"]["ray.io/cluster"] in clusters]
