"""KubeRay through KubeFoundry: the provider profile.

KubeFoundry creates a ``ray.io/v1`` RayService named like the deployment; KubeRay makes
a RayCluster ``NAME-xxxxx`` whose pods carry ``ray.io/cluster=NAME-xxxxx``, and the
Services ``NAME-head-svc`` and ``NAME-serve-svc`` (port 8000, the OpenAI API, the model
answering to the serve config's ``model_id``). A RayService has no finalizer: the
backend forgets it at once while its RayCluster and pods are still going, so Delete
waits for those too. See docs/PROVIDERS.md for the findings.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from ..clients import SERVICES, DeploymentStatus, KubeClient, NotFound, Resource
from ..engine import Finding
from ._calls import call_backend
from ._kubefoundry import KubeFoundryFlow
from ._profile import ClusterView, Deployment, Endpoint, Owned, ProviderProfile, Readiness, Tracked
from ._providers import HF_SECRET, ensure_token_secret, finding
from ._run import FlowContext

RAYSERVICES = Resource("ray.io", "v1", "rayservices")
RAYCLUSTERS = Resource("ray.io", "v1", "rayclusters")
#: The backend's default ``maxReplicas``: more replicas than this are clamped by KubeRay.
MAX_REPLICAS = 2


class KubeRayProfile(ProviderProfile):
    provider = "kuberay"
    title = "KubeRay"
    workload = RAYSERVICES
    workload_kind = "RayService"
    default_namespace = "kuberay-system"
    default_model = "Qwen/Qwen2.5-0.5B-Instruct"
    operator_namespace = "kuberay-system"
    operator_selector = "app.kubernetes.io/name=kuberay-operator"
    readiness_reads_pods = True
    version_env = "KUBERAY_VERSION"

    def create_body(self, d: Deployment) -> dict[str, Any]:
        return {
            "name": d.name,
            "namespace": d.namespace,
            "provider": self.provider,
            "modelId": d.model,
            "hfTokenSecret": HF_SECRET,
            # The backend's default context (16384) does not fit a small model's GPU.
            "contextLength": 4096,
            "replicas": d.replicas,
            "resources": {"gpu": 1},
        }

    async def prepare(
        self, kube: KubeClient, d: Deployment, log: Callable[[str], None]
    ) -> list[Owned]:
        return await ensure_token_secret(kube, d.namespace, log)

    def pod_selector(self, d: Deployment) -> str:
        return "ray.io/cluster"

    def owns_pod(self, d: Deployment, pod: dict[str, Any]) -> bool:
        """A pod of the RayCluster KubeRay made for this RayService: ``NAME-xxxxx`` exactly
        (the backend's own match is a prefix, which takes ``NAME-b``'s pods too)."""
        cluster = (pod.get("metadata", {}).get("labels") or {}).get("ray.io/cluster", "")
        return re.fullmatch(re.escape(d.name) + r"-[a-z0-9]{5}", cluster) is not None

    def tracked(self, d: Deployment) -> list[Tracked]:
        made_for = f"ray.io/originated-from-cr-name={d.name}"
        return [
            *super().tracked(d)[:1],
            Tracked("Service", SERVICES, d.namespace, label_selector=made_for),
            Tracked("RayCluster", RAYCLUSTERS, d.namespace, label_selector=made_for),
            *self.named_services(d),
        ]

    def service_names(self, d: Deployment) -> list[str]:
        return [f"{d.name}-head-svc", f"{d.name}-serve-svc"]

    def endpoint(self, d: Deployment) -> Endpoint:
        return Endpoint(f"{d.name}-serve-svc", 8000)

    async def readiness(self, status: DeploymentStatus, cluster: ClusterView) -> Readiness:
        if not (status.phase == "Running" and status.replicas.ready >= 1):
            return Readiness(False)
        d = cluster.deployment
        pods = await cluster.pods()
        workers = [p for p in pods if _node_type(p) == "worker"]
        findings: list[Finding] = []
        if len(workers) < d.replicas:
            findings.append(
                finding(
                    "kuberay-replicas-clamped",
                    f"asked for {d.replicas} replicas and the create answered 201 without a "
                    f"warning, but KubeRay runs {len(workers)} workers (maxReplicas "
                    f"{MAX_REPLICAS}); the backend reports {status.replicas.desired} desired",
                )
            )
        listed = await call_backend(cluster.api.deployment_pods(d.name, d.namespace))
        own = {p["metadata"]["name"] for p in pods}
        foreign = sorted(p.name for p in listed.pods if p.name not in own)
        if foreign:
            findings.append(
                finding(
                    "kuberay-pods-by-prefix",
                    f"GET /pods lists {len(foreign)} pod(s) of another deployment: "
                    f"{', '.join(foreign[:5])}",
                )
            )
        return Readiness(True, findings=tuple(findings))

    async def after_delete(self, cluster: ClusterView) -> tuple[Finding, ...]:
        d = cluster.deployment
        try:
            await call_backend(cluster.api.get_deployment(d.name, d.namespace))
            return ()
        except NotFound:
            pass
        left = await cluster.leftovers()
        if not left:
            return ()
        return (
            finding(
                "kuberay-gone-before-pods",
                f"GET answers 404 right after the delete while {len(left)} object(s) are still "
                f"there: {'; '.join(left[:4])}",
            ),
        )


def _node_type(pod: dict[str, Any]) -> str:
    return str((pod.get("metadata", {}).get("labels") or {}).get("ray.io/node-type", ""))


def flows(ctx: FlowContext) -> list[KubeFoundryFlow]:
    """KubeRay through KubeFoundry: install, the token Secret, a RayService, infer through NAME-serve-svc, delete."""
    return ctx.kubefoundry_flows(KubeRayProfile())
