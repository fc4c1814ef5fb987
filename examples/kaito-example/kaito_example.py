"""A provider flow in a package of its own, built from the orchestrator's public names.

KAITO again, judged the way a stricter team might: ready means the backend says
Running *and* the model pod's own Ready condition is true, and a backend that says
Running first is a finding. A Secret made before the deploy shows how cleanup takes
along what a flow made.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from orchestrator.clients import (
    SECRETS,
    DeploymentStatus,
    KubeClient,
    KubeFoundryClient,
    Resource,
)
from orchestrator.engine import Finding
from orchestrator.flows import (
    ClusterView,
    Deployment,
    FlowContext,
    KubeFoundryFlow,
    Owned,
    ProviderProfile,
    Readiness,
    call_backend,
    pod_problem,
    pod_ready,
)


class KaitoFromTheCluster(ProviderProfile):
    provider = "kaito"
    title = "KAITO"
    workload = Resource("kaito.sh", "v1beta1", "workspaces")
    workload_kind = "Workspace"
    default_namespace = "kaito-workspace"
    default_model = "llama3.2:1b"
    operator_namespace = "kaito-workspace"
    operator_selector = "app.kubernetes.io/name=kaito-workspace"
    readiness_reads_pods = True

    def create_body(self, d: Deployment) -> dict[str, Any]:
        return {
            "name": d.name,
            "namespace": d.namespace,
            "provider": "kaito",
            "modelSource": "premade",
            "premadeModel": d.model,
            "ggufRunMode": "direct",
            "computeType": "cpu",
            "replicas": d.replicas,
        }

    def pod_selector(self, d: Deployment) -> str:
        return f"kaito.sh/workspace={d.name}"

    async def prepare(
        self, kube: KubeClient, d: Deployment, log: Callable[[str], None]
    ) -> list[Owned]:
        name = f"{d.name}-notes"
        body = {"metadata": {"name": name}, "stringData": {"purpose": "example"}}
        await kube.create(SECRETS, body, d.namespace)
        log(f"made Secret {name}")
        return [Owned("Secret", SECRETS, name, d.namespace)]

    async def model_name(self, api: KubeFoundryClient, d: Deployment) -> str:
        return (await call_backend(api.catalog_model(d.model))).model_name

    async def readiness(self, status: DeploymentStatus, cluster: ClusterView) -> Readiness:
        pods = await cluster.pods()
        problem = next((p for p in map(pod_problem, pods) if p), None)
        said = status.phase == "Running" and status.replicas.ready >= 1
        seen = any(map(pod_ready, pods))
        early = said and not seen
        finding = Finding(name="running-early", message="Running before its pod is Ready")
        return Readiness(said and seen, failure=problem, findings=(finding,) if early else ())


def flows(ctx: FlowContext) -> list[KubeFoundryFlow]:
    """KAITO, ready only when its model pod agrees, with a Secret made and cleaned up."""
    return ctx.kubefoundry_flows(KaitoFromTheCluster())
