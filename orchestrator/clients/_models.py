"""The KubeFoundry answers the flow relies on, as pydantic models.

Only the fields the flow reads are declared, and unknown fields are kept, so a
newer backend that adds fields still validates; a backend that drops or
retypes one fails with the field's name instead of a KeyError deep in a phase.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Answer(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class Health(_Answer):
    status: str


class ClusterStatus(_Answer):
    connected: bool
    namespace: str | None = None
    error: str | None = None


class ProviderStatus(_Answer):
    provider_id: str = Field(alias="providerId")
    installed: bool
    crd_found: bool = Field(alias="crdFound")
    operator_running: bool = Field(alias="operatorRunning")
    message: str = ""


class InstallStep(_Answer):
    step: str
    success: bool
    output: str = ""
    error: str = ""


class InstallResult(_Answer):
    success: bool
    message: str = ""
    already_installed: bool = Field(default=False, alias="alreadyInstalled")
    installing: bool = False
    results: list[InstallStep] = []


class CatalogModel(_Answer):
    id: str
    model_name: str = Field(alias="modelName")
    image: str | None = None


class Created(_Answer):
    message: str
    name: str
    namespace: str
    provider: str
    warnings: list[str] | None = None


class Replicas(_Answer):
    desired: int
    ready: int
    available: int


class Condition(_Answer):
    type: str
    status: str
    reason: str | None = None
    message: str | None = None


class DeploymentStatus(_Answer):
    name: str
    namespace: str
    phase: str
    replicas: Replicas
    conditions: list[Condition] = []
    model_id: str | None = Field(default=None, alias="modelId")
    provider: str | None = None

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)


class Deleted(_Answer):
    message: str


class DeploymentPod(_Answer):
    name: str
    phase: str | None = None
    ready: bool | None = None
    restarts: int | None = None


class DeploymentPods(_Answer):
    pods: list[DeploymentPod]


class DeploymentLogs(_Answer):
    logs: str
    pod_name: str = Field(alias="podName")
