"""What one KubeFoundry provider is, for the provider-neutral flow: its profile.

The lifecycle (install once, guard the create, wait ready, inference, delete and
wait for 404, diagnostics, leak check, cleanup) is the same for every provider
KubeFoundry drives; what differs is data and a few readings: which install route,
which custom resource the backend creates, which labels its pods carry, which
Service serves the model, when it is ready. A :class:`ProviderProfile` holds
exactly that, so that a new provider is one small subclass.

Everything here is about the cluster and the backend as a provider shapes them;
nothing here runs a phase. See :class:`~orchestrator.flows.KubeFoundryFlow`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ..clients import PODS, SERVICES, DeploymentStatus, KubeClient, KubeFoundryClient, Resource
from ..engine import Finding
from ._pods import FATAL_WAITING_REASONS
from ._waiting import WatchSpec


@dataclass(frozen=True)
class Deployment:
    """One deployment a flow makes, by the names the backend and the cluster know it."""

    name: str
    namespace: str
    model: str
    replicas: int = 1


@dataclass(frozen=True)
class Endpoint:
    """The Service (in the deployment's namespace) and port that serve the model's API."""

    service: str
    port: int


@dataclass(frozen=True)
class Owned:
    """One object made for a deployment outside the backend (a Secret): cleanup deletes it."""

    kind: str
    resource: Resource
    name: str
    namespace: str


@dataclass(frozen=True)
class Tracked:
    """A kind of object a deployment puts in the cluster: waited on after the delete, and
    looked for by the leak check.

    ``owns`` narrows a selector that Kubernetes cannot express exactly (a label whose
    value only starts with the deployment's name).
    """

    kind: str
    resource: Resource
    namespace: str | None
    label_selector: str | None = None
    field_selector: str | None = None
    owns: Callable[[dict[str, Any]], bool] | None = None

    def watch(self, *, wakes: bool = True) -> WatchSpec:
        return WatchSpec(
            self.resource, self.namespace, self.label_selector, self.field_selector, wakes=wakes
        )

    def select(self, objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The objects that belong to the deployment."""
        return objects if self.owns is None else [o for o in objects if self.owns(o)]


@dataclass(frozen=True)
class Readiness:
    """A reading of whether the deployment serves yet.

    ``failure`` ends the wait at once (waiting longer cannot help). ``findings`` name
    what the backend got wrong while the cluster shows otherwise (its ``ready`` count
    stuck at 0 while the pods are Ready): each is recorded once per phase with
    :meth:`~orchestrator.engine.PhaseContext.finding` (and fails it under ``--strict``),
    but readiness is decided from what is true.
    """

    ready: bool
    failure: str | None = None
    findings: tuple[Finding, ...] = ()


class ClusterView(Protocol):
    """What a readiness reading may ask the cluster (and the backend, to compare its
    answers with the cluster's), cheaply and only when it needs to.

    The flow implements it and hands it to the profile; a profile only calls it, so it
    grows by methods without breaking one (``workload()`` came after ``pods()``).
    """

    @property
    def kube(self) -> KubeClient: ...

    @property
    def api(self) -> KubeFoundryClient:
        """The flow's backend client (its exchanges go into the flow's diagnostics)."""
        ...

    @property
    def deployment(self) -> Deployment:
        """The deployment being read: its name, namespace, model and the replicas asked."""
        ...

    async def pods(self) -> list[dict[str, Any]]:
        """The deployment's pods (the shared watches' view when there is one, else a list)."""
        ...

    async def workload(self) -> dict[str, Any] | None:
        """The deployment's workload (the profile's ``workload`` resource, named like the
        deployment) as the API server has it now; None when there is none.

        After the wait has seen a watch event on it, the read asks for a state not
        older than that event (its resourceVersion), which the API server may answer
        from its watch cache instead of a quorum read from etcd: still the server's
        answer, so a stream of ours that stalled does not fool it, and cheaper on each
        check. Prefer it to ``kube.get`` of the same object, which reads from etcd.
        """
        ...

    async def leftovers(self) -> list[str]:
        """What of the deployment is in the cluster now (listed, not the watches' view),
        leaving out what the profile made before the create (a Secret)."""
        ...


class ProviderProfile:
    """One KubeFoundry provider, as the provider-neutral flow needs to know it.

    Subclass it and set the class attributes; override the methods whose default
    does not fit. ``kaito.py`` is the model: about forty lines.
    """

    #: KubeFoundry's id of the provider: its install routes
    #: (``/api/installation/providers/ID/...``) and the create body's ``provider``.
    provider: str
    #: The provider's name as people write it, for phase titles and messages ("KAITO").
    title: str
    #: The custom resource the backend creates for a deployment, and its kind.
    workload: Resource
    workload_kind: str
    #: Where deployments go unless the configuration says otherwise.
    default_namespace: str = "default"
    #: The model to deploy unless the configuration says otherwise.
    default_model: str = ""
    #: The operator's pods, watched while the install settles (None: do not watch).
    operator_namespace: str | None = None
    operator_selector: str | None = None
    #: Container waiting reasons that end Wait Ready at once.
    fatal_waiting_reasons: frozenset[str] = FATAL_WAITING_REASONS
    #: The backend's environment variable that pins the provider's version, for a backend
    #: whose status and install routes otherwise ask GitHub for it, with no timeout (None:
    #: a pinned version, as KAITO's).
    version_env: str | None = None
    #: Whether a pod's change may change the readiness reading (True when
    #: :meth:`readiness` reads pods); otherwise pod events only feed early failure.
    readiness_reads_pods: bool = False

    @property
    def crd_name(self) -> str:
        """The workload's CustomResourceDefinition, watched while the install settles."""
        return f"{self.workload.plural}.{self.workload.group}"

    # -- creating ---------------------------------------------------------------

    def create_body(self, d: Deployment) -> dict[str, Any]:
        """The ``POST /api/deployments`` body."""
        raise NotImplementedError(f"{type(self).__name__} must define create_body()")

    async def prepare(
        self, kube: KubeClient, d: Deployment, log: Callable[[str], None]
    ) -> list[Owned]:
        """Make what the deployment needs before the create (a Secret); return what was
        made, which cleanup deletes and the leak check looks for. Default: nothing."""
        return []

    async def model_name(self, api: KubeFoundryClient, d: Deployment) -> str:
        """The name the served model answers to in chat completions. Default: the model id.

        Raise :class:`~orchestrator.engine.PhaseFailed` when the backend cannot serve it.
        """
        return d.model

    # -- finding its objects ---------------------------------------------------------

    def pod_selector(self, d: Deployment) -> str:
        """A label selector for the deployment's pods (may be broader: see ``owns_pod``)."""
        raise NotImplementedError(f"{type(self).__name__} must define pod_selector()")

    def owns_pod(self, d: Deployment, pod: dict[str, Any]) -> bool:
        """Whether a pod that ``pod_selector`` matched is the deployment's. Default: yes."""
        return True

    def service_selector(self, d: Deployment) -> str | None:
        """A label selector for the Services made for the deployment (None: none)."""
        return self.pod_selector(d)

    def service_names(self, d: Deployment) -> list[str]:
        """The names of the Services the provider makes for the deployment, as its docs
        give them: looked for by name as well as by ``service_selector``, since an
        operator may label its Services with nothing the selector matches (KAITO's carry
        no label at all). Default: none."""
        return []

    def workload_selector(self, d: Deployment) -> str:
        """The labels KubeFoundry puts on the workloads it creates."""
        return f"app.kubernetes.io/instance={d.name}"

    def tracked(self, d: Deployment) -> list[Tracked]:
        """What, besides the workload itself, must be gone after the delete."""
        owns: Callable[[dict[str, Any]], bool] | None = None
        if type(self).owns_pod is not ProviderProfile.owns_pod:

            def owns(pod: dict[str, Any]) -> bool:
                return self.owns_pod(d, pod)

        out = [Tracked("Pod", PODS, d.namespace, label_selector=self.pod_selector(d), owns=owns)]
        services = self.service_selector(d)
        if services is not None:
            out.append(Tracked("Service", SERVICES, d.namespace, label_selector=services))
        return out + self.named_services(d)

    def named_services(self, d: Deployment) -> list[Tracked]:
        """``service_names`` as tracked objects, one field selector each."""
        return [
            Tracked("Service", SERVICES, d.namespace, field_selector=f"metadata.name={name}")
            for name in self.service_names(d)
        ]

    # -- serving -----------------------------------------------------------------

    def endpoint(self, d: Deployment) -> Endpoint:
        """The Service and port that serve the model. Default: a Service named like the
        deployment, on port 80."""
        return Endpoint(d.name, 80)

    async def readiness(self, status: DeploymentStatus, cluster: ClusterView) -> Readiness:
        """Read the backend's status (and, if need be, the cluster). Default: the
        backend's word: ``Running`` with a ready replica; ``Failed`` ends the wait."""
        if status.phase == "Failed":
            return Readiness(False, failure="the backend reports phase Failed")
        return Readiness(status.phase == "Running" and status.replicas.ready >= 1)

    async def after_delete(self, cluster: ClusterView) -> tuple[Finding, ...]:
        """Read the backend right after its DELETE was accepted, before the wait for
        everything to go; return what it got wrong (findings). Default: nothing."""
        return ()

    # -- people --------------------------------------------------------------------

    def keep_hints(self, d: Deployment, api_url: str) -> list[str]:
        """Commands to look at a deployment that a failed run kept."""
        import shlex

        ns, name = shlex.quote(d.namespace), shlex.quote(d.name)
        pods = shlex.quote(self.pod_selector(d))
        return [
            f"kubectl -n {ns} get {self.crd_name} {name} -o yaml",
            f"kubectl -n {ns} describe pods -l {pods}",
            f"kubectl -n {ns} logs -l {pods} --tail=100",
            f"kubectl -n {ns} get events --sort-by=.lastTimestamp",
            f"curl -X DELETE '{api_url}/api/deployments/{d.name}?namespace={d.namespace}'",
        ]
