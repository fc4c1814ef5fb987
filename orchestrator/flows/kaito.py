"""KAITO through KubeFoundry: the provider profile, and the flow built on it.

KubeFoundry creates a KAITO ``Workspace`` named like the deployment; the KAITO
controller makes its pods and a Service of that name on port 80, all labelled
``kaito.sh/workspace=NAME``. The catalog says which name the model answers to.
"""

from __future__ import annotations

from typing import Any

from ..clients import (
    EVENTS,
    InferenceClient,
    KubeClient,
    KubeFoundryClient,
    NotFound,
    Resource,
    WatchHub,
)
from ..engine import PhaseFailed
from ._calls import call_backend
from ._kubefoundry import FlowSettings, KubeFoundryFlow
from ._once import OncePerRun
from ._pods import pod_problem
from ._profile import Deployment, ProviderProfile
from ._run import FlowContext

WORKSPACES = Resource("kaito.sh", "v1beta1", "workspaces")


class KaitoProfile(ProviderProfile):
    provider = "kaito"
    title = "KAITO"
    workload = WORKSPACES
    workload_kind = "Workspace"
    default_namespace = "kaito-workspace"
    default_model = "llama3.2:1b"
    operator_namespace = "kaito-workspace"
    operator_selector = "app.kubernetes.io/name=kaito-workspace"

    def create_body(self, d: Deployment) -> dict[str, Any]:
        """The create request, as the integration-testing plan sends it."""
        return {
            "name": d.name,
            "namespace": d.namespace,
            "provider": self.provider,
            "modelSource": "premade",
            "premadeModel": d.model,
            "ggufRunMode": "direct",
            "computeType": "cpu",
            "replicas": d.replicas,
        }

    def pod_selector(self, d: Deployment) -> str:
        return f"kaito.sh/workspace={d.name}"

    def service_names(self, d: Deployment) -> list[str]:
        """KAITO's Services select the pods by label but carry none of their own: only
        their names find them. (A Service with the pods' label is still looked for by
        ``service_selector``: nothing of KAITO's carries it, so one that does is a leak.)"""
        return [d.name, f"{d.name}-headless"]

    async def model_name(self, api: KubeFoundryClient, d: Deployment) -> str:
        try:
            return (await call_backend(api.catalog_model(d.model))).model_name
        except NotFound:
            raise PhaseFailed(f"model {d.model!r} is not in the backend's catalog") from None


def flows(ctx: FlowContext) -> list[KubeFoundryFlow]:
    """KAITO through KubeFoundry: install, deploy a catalog model, infer, delete."""
    return ctx.kubefoundry_flows(KaitoProfile())


# The names this module had before the flow became provider-neutral.
KaitoSettings = FlowSettings
InstallGate = OncePerRun


class KaitoFlow(KubeFoundryFlow):
    """The KubeFoundry flow with the KAITO profile."""

    def __init__(
        self,
        settings: FlowSettings,
        *,
        api: KubeFoundryClient,
        kube: KubeClient,
        inference: InferenceClient,
        hub: WatchHub | None = None,
        install_gate: OncePerRun | None = None,
    ) -> None:
        super().__init__(
            KaitoProfile(),
            settings,
            api=api,
            kube=kube,
            inference=inference,
            hub=hub,
            install_gate=install_gate,
        )


__all__ = [
    "EVENTS",
    "WORKSPACES",
    "InstallGate",
    "KaitoFlow",
    "KaitoProfile",
    "KaitoSettings",
    "flows",
    "pod_problem",
]
