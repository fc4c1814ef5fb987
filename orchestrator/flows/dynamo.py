"""NVIDIA Dynamo through KubeFoundry: the provider profile.

KubeFoundry creates an ``nvidia.com/v1alpha1`` DynamoGraphDeployment (DGD) named like
the deployment; the Dynamo operator runs a frontend and the workers, labelled
``nvidia.com/dynamo-graph-deployment-name=NAME``, and the Service ``NAME-frontend`` on
port 8000 (the OpenAI API; the model answers to ``--served-model-name``, else the model
id). Its status has only ``state`` and ``conditions``, which the backend misreads: it
reports 0 ready replicas for ever and Pending for a DGD the operator marked failed, and
never finds the pods. Readiness is therefore decided from the DGD and its pods, and
each misreading is a finding (docs/PROVIDERS.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..clients import DeploymentStatus, KubeClient, Resource
from ..engine import Finding
from ._calls import call_backend
from ._kubefoundry import KubeFoundryFlow
from ._pods import pod_ready
from ._profile import ClusterView, Deployment, Endpoint, Owned, ProviderProfile, Readiness
from ._providers import HF_SECRET, ensure_token_secret, finding
from ._run import FlowContext

DGDS = Resource("nvidia.com", "v1alpha1", "dynamographdeployments")
DGD_LABEL = "nvidia.com/dynamo-graph-deployment-name"


class DynamoProfile(ProviderProfile):
    provider = "dynamo"
    title = "Dynamo"
    workload = DGDS
    workload_kind = "DynamoGraphDeployment"
    default_namespace = "dynamo-system"
    default_model = "Qwen/Qwen2.5-0.5B-Instruct"
    operator_namespace = "dynamo-system"
    operator_selector = "app.kubernetes.io/name=dynamo-operator"
    readiness_reads_pods = True
    version_env = "DYNAMO_VERSION"

    def create_body(self, d: Deployment) -> dict[str, Any]:
        return {
            "name": d.name,
            "namespace": d.namespace,
            "provider": self.provider,
            "modelId": d.model,
            "engine": "vllm",
            "hfTokenSecret": HF_SECRET,
            "contextLength": 4096,
            "replicas": d.replicas,
            # Without resources the worker requests no GPU, and its CUDA engine fails.
            "resources": {"gpu": 1},
        }

    async def prepare(
        self, kube: KubeClient, d: Deployment, log: Callable[[str], None]
    ) -> list[Owned]:
        return await ensure_token_secret(kube, d.namespace, log)

    def pod_selector(self, d: Deployment) -> str:
        return f"{DGD_LABEL}={d.name}"

    def service_selector(self, d: Deployment) -> str | None:
        return f"{DGD_LABEL}={d.name}"

    def service_names(self, d: Deployment) -> list[str]:
        return [f"{d.name}-frontend"]

    def endpoint(self, d: Deployment) -> Endpoint:
        return Endpoint(f"{d.name}-frontend", 8000)

    async def readiness(self, status: DeploymentStatus, cluster: ClusterView) -> Readiness:
        d = cluster.deployment
        dgd = await cluster.workload()
        if dgd is None:
            return Readiness(False)
        dgd_status: dict[str, Any] = dgd.get("status") or {}
        state = str(dgd_status.get("state") or "")
        ready_cond: dict[str, Any] = next(
            (c for c in dgd_status.get("conditions") or [] if c.get("type") == "Ready"), {}
        )
        if state == "failed":
            why = f"{ready_cond.get('reason', '')}: {ready_cond.get('message', '')}".strip(": ")
            findings: tuple[Finding, ...] = ()
            if status.phase != "Failed":
                findings = (
                    finding(
                        "dynamo-failed-shown-pending",
                        f"the operator marked the DynamoGraphDeployment failed ({why or 'no reason'}) "
                        f"but the backend reports phase {status.phase}",
                    ),
                )
            return Readiness(
                False,
                failure=f"the Dynamo operator marked it failed ({why or 'no reason given'})",
                findings=findings,
            )
        if status.phase != "Running":
            return Readiness(False)
        pods = await cluster.pods()
        ready_pods = [p for p in pods if pod_ready(p)]
        # The frontend, and every worker the backend counts as desired.
        serving = (
            bool(pods) and len(ready_pods) == len(pods) and len(pods) > status.replicas.desired
        )
        findings_list: list[Finding] = []
        if status.replicas.ready == 0 and ready_pods:
            findings_list.append(
                finding(
                    "dynamo-ready-replicas-zero",
                    f"the backend reports phase Running with replicas.ready 0 of "
                    f"{status.replicas.desired}, while {len(ready_pods)}/{len(pods)} pods are Ready",
                )
            )
        if not serving and status.replicas.ready < 1:
            return Readiness(False, findings=tuple(findings_list))
        listed = await call_backend(cluster.api.deployment_pods(d.name, d.namespace))
        if not listed.pods and pods:
            findings_list.append(
                finding(
                    "dynamo-pods-not-listed",
                    f"GET /pods lists no pods while {len(pods)} run "
                    f"({DGD_LABEL}={d.name}); /logs finds none either",
                )
            )
        return Readiness(True, findings=tuple(findings_list))


def flows(ctx: FlowContext) -> list[KubeFoundryFlow]:
    """NVIDIA Dynamo through KubeFoundry: install, the token Secret, a DGD, infer through NAME-frontend, delete."""
    return ctx.kubefoundry_flows(DynamoProfile())
