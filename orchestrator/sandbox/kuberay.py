"""A stand-in for the KubeRay operator (v1.5): RayService -> RayCluster -> head and worker pods.

For each RayService it does what KubeRay visibly does: creates a RayCluster named
``NAME-xxxxx`` from ``spec.rayClusterConfig`` (worker replicas clamped to
``[minReplicas, maxReplicas]``, as KubeRay does), the Services ``NAME-head-svc`` and
``NAME-serve-svc`` (port 8000, selecting pods labelled ``ray.io/serve=true``), a head pod
and the worker pods (``ray.io/cluster=NAME-xxxxx``), and moves the RayCluster and
RayService status the way KubeRay >= 1.3 writes it (``serviceStatus: Running``, the
``Ready`` condition with ``Initializing`` then ``NonZeroServeEndpoints``). The model
behind ``NAME-serve-svc`` is a real llama.cpp server (or a stub) answering to the
serve config's ``model_id``.

A RayService has no finalizer: it is gone at once when deleted, and its RayCluster and
pods are collected afterwards (here by this stand-in, as the garbage collector would
on a real cluster; the pods take ``delays.pod_termination`` to go). With the
``kuberay_get_404_while_pods_go`` defect switched off, the stand-in holds a finalizer
until they are gone (never, while ``stuck_delete`` holds, as the other operators),
which is what a backend that reports a deployment until its workload has gone would
show.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import yaml

from ._kube import JSON
from ._operator import (
    CustomResourceOperator,
    condition,
    now,
    pod_running,
    secret_refs,
    suffix,
)

log = logging.getLogger(__name__)

GROUP, VERSION = "ray.io", "v1"
RAYSERVICES = f"/apis/{GROUP}/{VERSION}/rayservices"
OPERATOR_NAMESPACE = "kuberay-system"
OPERATOR_SELECTOR = "app.kubernetes.io/name=kuberay-operator"
#: Held only when the "GET 404 while pods go" defect is switched off (see the module doc).
FINALIZER = "ray.io/rayservice-finalizer"
SERVE_PORT = 8000
HEAD_PORTS = [
    {"name": "client", "port": 10001, "targetPort": 10001, "protocol": "TCP"},
    {"name": "dashboard", "port": 8265, "targetPort": 8265, "protocol": "TCP"},
    {"name": "gcs-server", "port": 6379, "targetPort": 6379, "protocol": "TCP"},
    {"name": "metrics", "port": 8080, "targetPort": 8080, "protocol": "TCP"},
    {"name": "serve", "port": SERVE_PORT, "targetPort": SERVE_PORT, "protocol": "TCP"},
]


def rayclusters_path(namespace: str, name: str = "") -> str:
    base = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/rayclusters"
    return f"{base}/{name}" if name else base


def serve_model_id(service: JSON) -> str:
    """The name the model answers to: the serve config's ``model_id``."""
    try:
        config = yaml.safe_load(service.get("spec", {}).get("serveConfigV2") or "") or {}
        app = (config.get("applications") or [{}])[0]
        args = app.get("args") or {}
        llm = (args.get("llm_configs") or [None])[0] or args.get("prefill_config") or {}
        return str(llm["model_loading_config"]["model_id"])
    except (yaml.YAMLError, AttributeError, IndexError, KeyError, TypeError):
        return str(service["metadata"]["name"])


def worker_groups(cluster_spec: JSON) -> list[tuple[str, int, JSON]]:
    """(groupName, replicas KubeRay runs, group spec): replicas clamped to [min, max]."""
    groups = []
    for group in cluster_spec.get("workerGroupSpecs") or []:
        wanted = int(group.get("replicas", 1))
        low = int(group.get("minReplicas", 0))
        high = int(group.get("maxReplicas", 2**31 - 1))
        groups.append((group["groupName"], max(low, min(wanted, high)), group))
    return groups


class KubeRayOperator(CustomResourceOperator):
    """Reconciles RayServices in all namespaces while the kuberay-operator pod exists."""

    group = GROUP
    version = VERSION
    plural = "rayservices"
    operator_namespace = OPERATOR_NAMESPACE
    operator_selector = OPERATOR_SELECTOR
    label = "kuberay-operator"
    finalizer = FINALIZER

    def holds_finalizer(self) -> bool:
        """The real RayService has none: the backend forgets it while its pods still go."""
        return not self.state.faults.defects.kuberay_get_404_while_pods_go

    async def gone(self, namespace: str, name: str) -> None:
        """Collect the RayCluster, its Services and pods (what the garbage collector does)."""
        for service in (f"{name}-head-svc", f"{name}-serve-svc"):
            await self.kube.delete(f"/api/v1/namespaces/{namespace}/services/{service}")
        listing = await self.kube.get(
            rayclusters_path(namespace),
            {"labelSelector": f"ray.io/originated-from-cr-name={name}"},
        )
        for cluster in listing.get("items", []):
            cluster_name = cluster["metadata"]["name"]
            await self.kube.delete(rayclusters_path(namespace, cluster_name))
            await self.delete_pods(namespace, f"ray.io/cluster={cluster_name}")
        await self.fleet.remove(namespace, name)
        self.state.record(namespace, name, "raycluster and pods deleted")

    async def provision(self, key: tuple[str, str], obj: JSON) -> None:
        await self.requeue(key, "rayservice", lambda: self._bring_up(*key, obj))

    async def _bring_up(self, namespace: str, name: str, obj: JSON) -> None:
        await self.state.wait_delay("resource", time.monotonic())
        generation = obj["metadata"].get("generation", 1)
        cluster_spec = obj["spec"]["rayClusterConfig"]
        cluster = f"{name}-{suffix()}"
        groups = worker_groups(cluster_spec)
        await self.kube.create(
            rayclusters_path(namespace),
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "RayCluster",
                "metadata": {
                    "name": cluster,
                    "namespace": namespace,
                    "labels": {
                        "ray.io/originated-from-crd": "RayService",
                        "ray.io/originated-from-cr-name": name,
                        "app.kubernetes.io/created-by": "kuberay-operator",
                    },
                    "ownerReferences": [
                        {
                            "apiVersion": f"{GROUP}/{VERSION}",
                            "kind": "RayService",
                            "name": name,
                            "uid": obj["metadata"]["uid"],
                            "controller": True,
                            "blockOwnerDeletion": True,
                        }
                    ],
                },
                "spec": cluster_spec,
            },
        )
        self.state.record(namespace, name, f"raycluster {cluster} created")
        initializing = "RayService is initializing"
        await self.patch_status(
            self.path(namespace, name),
            {
                "observedGeneration": generation,
                "lastUpdateTime": now(),
                "numServeEndpoints": 0,
                "pendingServiceStatus": {"rayClusterName": cluster},
                "conditions": [
                    condition("Ready", False, "Initializing", initializing, generation),
                    condition("UpgradeInProgress", False, "Initializing", initializing, generation),
                ],
            },
        )
        cluster_selector = {"ray.io/cluster": cluster}
        await self.create_service(
            namespace,
            f"{name}-head-svc",
            {**cluster_selector, "ray.io/node-type": "head"},
            HEAD_PORTS,
            labels={**cluster_selector, "ray.io/originated-from-cr-name": name},
        )
        await self.create_service(
            namespace,
            f"{name}-serve-svc",
            {**cluster_selector, "ray.io/serve": "true"},
            [{"name": "serve", "port": SERVE_PORT, "targetPort": SERVE_PORT, "protocol": "TCP"}],
            labels={**cluster_selector, "ray.io/originated-from-cr-name": name},
            proxy_to=self.fleet.url_for(namespace, name),
        )

        pods = [(f"{cluster}-head", "headgroup", "head", cluster_spec["headGroupSpec"])]
        for group_name, replicas, group in groups:
            for _ in range(replicas):
                pods.append(
                    (f"{cluster}-{group_name}-worker-{suffix()}", group_name, "worker", group)
                )
        missing_any = False
        for pod_name, group_name, node_type, group in pods:
            containers = _containers(group)
            missing = await self.missing_secrets(namespace, secret_refs(containers))
            missing_any = missing_any or bool(missing)
            await self.create_pod(
                namespace,
                pod_name,
                {
                    **cluster_selector,
                    "ray.io/node-type": node_type,
                    "ray.io/group": group_name,
                    "ray.io/identifier": f"{cluster}-{node_type}",
                    "ray.io/is-ray-node": "yes",
                    "app.kubernetes.io/created-by": "kuberay-operator",
                    "app.kubernetes.io/name": "kuberay",
                },
                containers,
                missing_secret=missing[0] if missing else None,
            )
        self.state.record(namespace, name, f"{len(pods)} pods created")
        if missing_any:
            self.state.record(namespace, name, "pods cannot start: secret missing")
            return

        selector = f"ray.io/cluster={cluster}"
        running = await self.wait_pods(
            namespace,
            selector,
            lambda items: len(items) == len(pods) and all(pod_running(p) for p in items),
        )
        self.state.record(namespace, name, "pods Running")
        workers = sum(replicas for _, replicas, _ in groups)
        cluster_status = _cluster_status(cluster, name, groups, workers, generation)
        await self.patch_status(rayclusters_path(namespace, cluster), cluster_status)

        self.fleet.ensure(namespace, name, serve_model_id(obj))
        upstream = await self.fleet.wait_ready(namespace, name)
        await self.probe(upstream)
        self.state.record(namespace, name, "model server answering")
        await self.state.wait_delay("inference_ready", time.monotonic())
        if self.state.faults.never_ready:
            self.state.record(namespace, name, "serve endpoints withheld (never_ready)")
            await self.state.until(lambda f: not f.never_ready)
        for pod in running:
            await self.kube.merge_patch(
                f"/api/v1/namespaces/{namespace}/pods/{pod['metadata']['name']}",
                {"metadata": {"labels": {"ray.io/serve": "true"}}},
            )
        ready = "Number of serve endpoints is greater than 0"
        no_pending = "Active Ray cluster exists and no pending Ray cluster"
        await self.patch_status(
            self.path(namespace, name),
            {
                "observedGeneration": generation,
                "lastUpdateTime": now(),
                "serviceStatus": "Running",
                "numServeEndpoints": len(running),
                "pendingServiceStatus": None,
                "activeServiceStatus": {
                    "rayClusterName": cluster,
                    "rayClusterStatus": cluster_status,
                    "applicationStatuses": {
                        "llm_app": {
                            "status": "RUNNING",
                            "serveDeploymentStatuses": {
                                "LLMServer": {"status": "HEALTHY"},
                                "OpenAiIngress": {"status": "HEALTHY"},
                            },
                        }
                    },
                },
                "conditions": [
                    condition("Ready", True, "NonZeroServeEndpoints", ready, generation),
                    condition(
                        "UpgradeInProgress", False, "NoPendingCluster", no_pending, generation
                    ),
                ],
            },
        )
        self.state.record(namespace, name, "serviceStatus=Running")


def _containers(group: JSON) -> list[JSON]:
    """The group template's containers, as the pod gets them."""
    out = []
    for source in group.get("template", {}).get("spec", {}).get("containers") or []:
        container: JSON = {"name": source.get("name", "ray"), "image": source.get("image", "")}
        for key in ("command", "args", "env", "envFrom", "ports", "resources"):
            if key in source:
                container[key] = source[key]
        out.append(container)
    return out


def _cluster_status(
    cluster: str, service: str, groups: list[tuple[str, int, JSON]], workers: int, generation: int
) -> dict[str, Any]:
    """RayCluster status as KubeRay writes it once every pod is ready (CRD field names)."""
    low = sum(int(g.get("minReplicas", 0)) for _, _, g in groups)
    high = sum(int(g.get("maxReplicas", 0)) for _, _, g in groups)
    stamp = now()
    return {
        "state": "ready",
        "desiredWorkerReplicas": workers,
        "availableWorkerReplicas": workers,
        "readyWorkerReplicas": workers,
        "minWorkerReplicas": low,
        "maxWorkerReplicas": high,
        "endpoints": {
            "client": "10001",
            "dashboard": "8265",
            "gcs-server": "6379",
            "metrics": "8080",
            "serve": "8000",
        },
        "head": {"podName": f"{cluster}-head", "serviceName": f"{service}-head-svc"},
        "lastUpdateTime": stamp,
        "stateTransitionTimes": {"ready": stamp},
        "observedGeneration": generation,
        "conditions": [
            condition("HeadPodReady", True, "HeadPodRunningAndReady", "", generation),
            condition(
                "RayClusterProvisioned",
                True,
                "AllPodRunningAndReadyFirstTime",
                "All Ray Pods are ready for the first time",
                generation,
            ),
        ],
    }
