"""A stand-in for the NVIDIA Dynamo operator (0.7): DynamoGraphDeployment -> frontend and workers.

For each DynamoGraphDeployment (DGD) it does what the operator visibly does: adds its
finalizer ``nvidia.com/finalizer``, runs a pod per replica of every service in
``spec.services`` (``NAME-frontend-...``, ``NAME-vllmworker-...``), each labelled
``nvidia.com/dynamo-graph-deployment-name=NAME`` (and not ``app.kubernetes.io/instance``),
creates the Service ``NAME-frontend`` on port 8000, and writes the only status the CRD
has: ``state`` (``pending``, ``successful``, ``failed``) and the ``Ready`` condition
(``some_resources_are_not_ready`` / ``all_resources_are_ready``). The model behind
``NAME-frontend`` is a real llama.cpp server (or a stub) answering to
``--served-model-name``, else ``--model``.

A worker without a GPU request crashes, as Dynamo's CUDA engines do on a CPU node; a
pod whose ``envFromSecret`` is missing cannot start. The ``operator_fails`` fault makes
the operator mark the DGD ``failed`` and make nothing. On deletion the operator
deletes the pods and the Service and only then releases its finalizer (never, while
``stuck_delete`` holds).
"""

from __future__ import annotations

import logging
import re
import time

from ._kube import JSON
from ._operator import (
    CustomResourceOperator,
    condition,
    pod_running,
    secret_refs,
    suffix,
)

log = logging.getLogger(__name__)

GROUP, VERSION = "nvidia.com", "v1alpha1"
DGDS = f"/apis/{GROUP}/{VERSION}/dynamographdeployments"
OPERATOR_NAMESPACE = "dynamo-system"
OPERATOR_SELECTOR = "app.kubernetes.io/name=dynamo-operator"
FINALIZER = "nvidia.com/finalizer"
DGD_LABEL = "nvidia.com/dynamo-graph-deployment-name"
FRONTEND_PORT = 8000
NO_GPU_LINE = "RuntimeError: No CUDA GPUs are available"


def model_names(dgd: JSON) -> tuple[str, str]:
    """(modelId, name it answers to) from the first worker's command line."""
    for service in (dgd.get("spec", {}).get("services") or {}).values():
        if service.get("componentType") != "worker":
            continue
        args = ((service.get("extraPodSpec") or {}).get("mainContainer") or {}).get("args") or [""]
        model = re.search(r"--model\s+(\S+)", args[0])
        served = re.search(r"--served-model-name\s+(\S+)", args[0])
        model_id = model.group(1) if model else ""
        return model_id, served.group(1) if served else model_id
    return "", ""


def _has_gpu(service: JSON) -> bool:
    resources = service.get("resources") or {}
    for part in ("limits", "requests"):
        value = (resources.get(part) or {}).get("gpu")
        if value not in (None, "", "0"):
            return True
    return False


class DynamoOperator(CustomResourceOperator):
    """Reconciles DynamoGraphDeployments in all namespaces while the dynamo-operator pod exists."""

    group = GROUP
    version = VERSION
    plural = "dynamographdeployments"
    operator_namespace = OPERATOR_NAMESPACE
    operator_selector = OPERATOR_SELECTOR
    label = "dynamo-operator"
    finalizer = FINALIZER

    async def gone(self, namespace: str, name: str) -> None:
        await self.kube.delete(f"/api/v1/namespaces/{namespace}/services/{name}-frontend")
        await self.delete_pods(namespace, f"{DGD_LABEL}={name}")
        await self.fleet.remove(namespace, name)
        self.state.record(namespace, name, "pods and services deleted")

    async def provision(self, key: tuple[str, str], obj: JSON) -> None:
        await self.requeue(key, "dynamographdeployment", lambda: self._bring_up(*key, obj))

    async def _status(
        self,
        namespace: str,
        name: str,
        state: str,
        ready: bool,
        reason: str,
        message: str,
        generation: int,
    ) -> None:
        await self.patch_status(
            self.path(namespace, name),
            {
                "state": state,
                "conditions": [condition("Ready", ready, reason, message, generation)],
            },
        )
        self.state.record(namespace, name, f"state={state}")

    async def _bring_up(self, namespace: str, name: str, obj: JSON) -> None:
        await self.state.wait_delay("resource", time.monotonic())
        generation = obj["metadata"].get("generation", 1)
        services = obj.get("spec", {}).get("services") or {}
        components = sorted(services)
        await self._status(
            namespace,
            name,
            "pending",
            False,
            "some_resources_are_not_ready",
            f"{len(components)} resources not ready: "
            + str([f"{name}-{c.lower()}" for c in components]),
            generation,
        )
        if self.state.faults.operator_fails:
            # What the operator does when it cannot make the graph's components: it marks
            # the DGD failed and makes nothing (so only the DGD's state tells).
            await self._status(
                namespace,
                name,
                "failed",
                False,
                "failed_to_reconcile",
                "failed to create the component deployments: admission webhook denied the request",
                generation,
            )
            return
        await self.create_service(
            namespace,
            f"{name}-frontend",
            {DGD_LABEL: name, "nvidia.com/dynamo-component-type": "frontend"},
            [
                {
                    "name": "http",
                    "port": FRONTEND_PORT,
                    "targetPort": FRONTEND_PORT,
                    "protocol": "TCP",
                }
            ],
            labels={DGD_LABEL: name},
            proxy_to=self.fleet.url_for(namespace, name),
        )
        expected = 0
        broken = False
        crashing: list[tuple[str, str]] = []
        for component in components:
            service = services[component]
            kind = service.get("componentType", "main")
            containers = [_container(service)]
            missing = await self.missing_secrets(namespace, secret_refs(containers))
            crash = None
            if kind == "worker" and not missing:
                crash = None if _has_gpu(service) else NO_GPU_LINE
            broken = broken or bool(missing) or crash is not None
            deployment = f"{name}-{component.lower()}"
            template_hash = suffix(10)
            for _ in range(int(service.get("replicas", 1))):
                expected += 1
                pod_name = f"{deployment}-{template_hash}-{suffix()}"
                if crash:
                    crashing.append((pod_name, crash))
                await self.create_pod(
                    namespace,
                    pod_name,
                    {
                        DGD_LABEL: name,
                        "nvidia.com/dynamo-component": component,
                        "nvidia.com/dynamo-component-type": kind,
                        "nvidia.com/dynamo-namespace": service.get("dynamoNamespace", name),
                        "nvidia.com/selector": deployment,
                    },
                    containers,
                    missing_secret=missing[0] if missing else None,
                    crash=crash,
                )
        self.state.record(namespace, name, f"{expected} pods created")
        for pod_name, line in crashing:
            await self.show_crash(namespace, pod_name, line)
        if broken:
            self.state.record(namespace, name, "pods cannot start")
            return

        await self.wait_pods(
            namespace,
            f"{DGD_LABEL}={name}",
            lambda items: len(items) == expected and all(pod_running(p) for p in items),
        )
        self.state.record(namespace, name, "pods Running")
        self.fleet.ensure(namespace, name, model_names(obj)[1] or name)
        upstream = await self.fleet.wait_ready(namespace, name)
        await self.probe(upstream)
        self.state.record(namespace, name, "model server answering")
        await self.state.wait_delay("inference_ready", time.monotonic())
        if self.state.faults.never_ready:
            self.state.record(namespace, name, "readiness withheld (never_ready)")
            await self.state.until(lambda f: not f.never_ready)
        await self._status(
            namespace,
            name,
            "successful",
            True,
            "all_resources_are_ready",
            "All resources are ready",
            generation,
        )


def _container(service: JSON) -> JSON:
    """The pod's main container from ``extraPodSpec.mainContainer`` and ``envFromSecret``."""
    main = (service.get("extraPodSpec") or {}).get("mainContainer") or {}
    container: JSON = {
        "name": "main",
        "image": main.get("image", "nvcr.io/nvidia/ai-dynamo/vllm-runtime"),
        "ports": [{"containerPort": FRONTEND_PORT, "name": "http", "protocol": "TCP"}],
    }
    for key in ("command", "args", "workingDir", "env"):
        if key in main:
            container[key] = main[key]
    if service.get("envFromSecret"):
        container["envFrom"] = [{"secretRef": {"name": service["envFromSecret"]}}]
    gpu = ((service.get("resources") or {}).get("limits") or {}).get("gpu")
    if gpu:
        container["resources"] = {
            "limits": {"nvidia.com/gpu": str(gpu)},
            "requests": {"nvidia.com/gpu": str(gpu)},
        }
    return container
