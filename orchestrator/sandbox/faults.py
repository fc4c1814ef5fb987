"""Fault knobs and the timeline: how a test makes the sandbox misbehave, and sees when it moved.

The orchestrator has to fail fast and name the cause when KubeFoundry, KAITO or the
model misbehave. Each knob here makes one such failure happen on demand, at start or
while a run is in flight (``POST /_sandbox/faults``), so every diagnostic path of the
flow can be exercised without a broken cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

InferenceFault = Literal[
    "ok", "malformed", "empty", "wrong_object", "wrong_chat_template", "wrong_model"
]

#: The KubeFoundry routes a body or hang fault can target, by the name tests use.
#: Each maps to the (method, route pattern) the stand-in registers.
ROUTES: dict[str, tuple[str, str]] = {
    "provider_status": ("GET", "/api/installation/providers/{id}/status"),
    "install": ("POST", "/api/installation/providers/{id}/install"),
    "catalog_model": ("GET", "/api/aikit/models/{id}"),
    "create": ("POST", "/api/deployments"),
    "deployment_status": ("GET", "/api/deployments/{name}"),
    "delete": ("DELETE", "/api/deployments/{name}"),
    "cluster_status": ("GET", "/api/cluster/status"),
}
RouteName = Literal[
    "provider_status",
    "install",
    "catalog_model",
    "create",
    "deployment_status",
    "delete",
    "cluster_status",
]


class Delays(BaseModel):
    """Seconds the stand-ins wait before each step, small so that a whole flow takes seconds.

    Each is above zero by default so that the flow walks the same waits as against a real
    cluster (the install answer comes before the operator runs; a Workspace being deleted
    stays visible for a moment), only shorter. The real figures are in each description.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    operator_start: float = Field(
        0.5,
        ge=0,
        description="install answered -> KAITO operator pod Running (a real install: about "
        "8 s after the answer, which itself takes about 4 s)",
    )
    resource: float = Field(
        0.2, ge=0, description="Workspace seen -> ResourceReady, pod and services"
    )
    pod_start: float = Field(0.3, ge=0, description="pod created -> Running (fake-kubelet/delay)")
    image_pull_backoff: float = Field(
        1.0,
        ge=0,
        description="image_pull_error: the pull failed (ErrImagePull) -> the kubelet backs off "
        "(ImagePullBackOff); a kubelet: about 10 s, its next sync of the pod",
    )
    inference_ready: float = Field(
        0.2, ge=0, description="pod Running and model up -> InferenceReady"
    )
    finalize: float = Field(
        0.2,
        ge=0,
        description="Workspace deleted -> its children torn down and the finalizer released; "
        "meanwhile it reports WorkspaceDeleting=True and keeps its phase (seconds in a cluster)",
    )
    #: KubeRay and Dynamo stand-ins: how long a deleted pod stays Terminating
    #: (``fake-kubelet/termination-delay``), which is what makes a workload outlive its CR.
    #: Every KubeRay/Dynamo Delete waits it out, so it is as short as the others; a test
    #: whose subject is a workload seen outliving its CR (``kuberay-gone-before-pods``)
    #: asks for a longer one, so that what it shows is a state and not a close race.
    pod_termination: float = Field(
        0.5, ge=0, description="pod deleted -> gone (KubeRay/Dynamo pods; seconds in a cluster)"
    )


class Defects(BaseModel):
    """The real KubeFoundry backend's known defects with KubeRay and Dynamo, each switchable.

    On (the default) the stand-in answers as the real backend does; off, it answers as a
    backend without that defect would, so a test can show a finding and its absence.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    #: Dynamo ``replicas.ready``/``available`` read keys the operator never writes: always 0.
    dynamo_ready_always_zero: bool = True
    #: A DynamoGraphDeployment in the operator's ``failed`` state shows as Pending.
    dynamo_failed_shows_pending: bool = True
    #: ``/pods`` and ``/logs`` never find Dynamo's pods (they carry no label it tries).
    dynamo_pods_not_found: bool = True
    #: ``/pods`` matches KubeRay pods whose ``ray.io/cluster`` merely starts with the name.
    kuberay_pods_by_prefix: bool = True
    #: ``replicas`` above ``maxReplicas`` (2) is sent as is, and KubeRay clamps it.
    kuberay_clamps_replicas: bool = True
    #: GET is 404 as soon as the RayService is gone, while its RayCluster and pods remain.
    kuberay_get_404_while_pods_go: bool = True


class BadBody(BaseModel):
    """Answer ``route`` with a broken body: not JSON at all, or JSON with a key field missing/retyped.

    ``count`` limits it to that many answers (None: until the fault is lifted).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    route: RouteName
    kind: Literal["invalid_json", "wrong_shape"]
    count: int | None = Field(None, ge=1)


class Faults(BaseModel):
    """Everything that can be made to go wrong; the defaults are a healthy installation."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    #: Not a fault: serve canned completions instead of one llama.cpp server per Workspace,
    #: so that many deployments at once fit on a small machine (benchmarks).
    stub_models: bool = False
    install_fails: bool = False
    never_ready: bool = False
    image_pull_error: bool = False
    #: The model image's pull answers 429 ``toomanyrequests`` (ErrImagePull, then after
    #: ``delays.image_pull_backoff`` ImagePullBackOff) until the fault is lifted; the
    #: kubelet's next try then pulls it and the pod runs, as a rate limit clears.
    image_pull_rate_limited: bool = False
    crash_loop: bool = False
    inference: InferenceFault = "ok"
    model_loading_seconds: float = Field(0, ge=0)
    stuck_delete: bool = False
    #: The next N backend requests answer ``backend_error_status`` (a proxy or a busy backend).
    backend_errors: int = Field(0, ge=0)
    backend_error_status: int = Field(503, ge=500, le=599)
    #: The next N backend requests see their connection closed without any answer.
    backend_resets: int = Field(0, ge=0)
    #: Requests to this route never answer until the fault is lifted.
    hang_route: RouteName | None = None
    #: The next N requests to ``hang_route`` are answered as usual before it hangs: a
    #: route that an earlier phase asks too (Deploy's look for an existing deployment on
    #: the status route) hangs from a known request on, not from whenever a test's hook
    #: won its race with the run.
    hang_after: int = Field(0, ge=0)
    #: DELETE /api/deployments/{name} answers 200 "deleted successfully" and deletes
    #: nothing: cleanup must not take the backend's word for it. (A DELETE that never
    #: answers is ``hang_route: delete``.)
    delete_noop: bool = False
    #: Every error answer (4xx/5xx) quotes the request's Authorization header in its
    #: message, as careless proxies and backends do: the token must still reach no report.
    echo_authorization: bool = False
    bad_body: BadBody | None = None
    # Kubernetes API faults: only when the sandbox runs its own Kubernetes API (a real
    # cluster cannot be told to misbehave like this).
    #: Every watch stream ends after this many seconds; clients must reopen it.
    watch_cut_after: float | None = Field(None, gt=0)
    #: The next N watch requests answer 410 Gone; clients must relist.
    watch_gone: int = Field(0, ge=0)
    #: Only watches with exactly this labelSelector get those 410s (None: any watch;
    #: ``path=/api/v1/namespaces/NS/pods``: an unfiltered watch of that collection).
    watch_gone_selector: str | None = None
    #: List/watch of a CRD's resources answer 429 for this many seconds after it is Established.
    too_many_requests_after_crd: float = Field(0, ge=0)
    #: The Dynamo operator marks the DynamoGraphDeployment ``failed`` (its workers never start).
    operator_fails: bool = False
    delays: Delays = Field(default_factory=Delays)
    defects: Defects = Field(default_factory=Defects)

    def kube_faults_set(self) -> list[str]:
        """The Kubernetes API knobs that are switched on (which a real cluster cannot honour)."""
        return [k for k in KUBE_KNOBS if getattr(self, k) not in (None, 0, False)]


KUBE_KNOBS = ("watch_cut_after", "watch_gone", "too_many_requests_after_crd")


class TimelineEntry(BaseModel):
    """One moment the sandbox changed something a flow waits for."""

    at: str
    elapsed: float
    namespace: str
    name: str
    event: str


class SandboxState:
    """The faults in force and the timeline, shared by the stand-ins of one sandbox.

    Faults are read at the moment they matter, and every change wakes whoever waits
    on a delay, so shortening a delay at run time takes effect at once.
    """

    def __init__(self, faults: Faults | None = None, *, kube_faults: bool = True) -> None:
        self.faults = faults.model_copy(deep=True) if faults else Faults()
        #: False when the stand-ins run against a real cluster, whose API cannot be broken on demand.
        self.kube_faults = kube_faults
        self._check_kube_faults(self.faults)
        self.timeline: list[TimelineEntry] = []
        self._started = time.monotonic()
        self._changed = asyncio.Event()

    def update(self, patch: dict[str, Any]) -> Faults:
        """Merge a partial JSON object into the faults (nested ``delays``/``defects`` too) and validate it."""
        merged = self.faults.model_dump()
        for key, value in patch.items():
            if key in ("delays", "defects") and isinstance(value, dict):
                merged[key].update(value)
            else:
                merged[key] = value
        faults = Faults.model_validate(merged)
        self._check_kube_faults(faults)
        self.faults = faults
        self._notify()
        return self.faults

    def _check_kube_faults(self, faults: Faults) -> None:
        if not self.kube_faults and faults.kube_faults_set():
            raise ValueError(
                f"{', '.join(faults.kube_faults_set())}: only the sandbox's own Kubernetes API "
                "can inject these; this sandbox runs against a real cluster"
            )

    def take_backend_error(self) -> int | None:
        """Consume one of the ``backend_errors`` if any are left: the status to answer."""
        if self.faults.backend_errors <= 0:
            return None
        self.faults.backend_errors -= 1
        return self.faults.backend_error_status

    def take_backend_reset(self) -> bool:
        """Consume one of the ``backend_resets`` if any are left."""
        if self.faults.backend_resets <= 0:
            return False
        self.faults.backend_resets -= 1
        return True

    def take_hang(self, route: str) -> bool:
        """Whether this request to ``route`` hangs (counting down ``hang_after`` if not)."""
        if self.faults.hang_route != route:
            return False
        if self.faults.hang_after > 0:
            self.faults.hang_after -= 1
            return False
        return True

    def take_bad_body(self, route: str) -> str | None:
        """The kind of broken body ``route`` answers with now, if any (counting it)."""
        bad = self.faults.bad_body
        if bad is None or bad.route != route:
            return None
        if bad.count is not None:
            self.faults.bad_body = (
                None if bad.count <= 1 else bad.model_copy(update={"count": bad.count - 1})
            )
        return bad.kind

    def record(self, namespace: str, name: str, event: str) -> None:
        self.timeline.append(
            TimelineEntry(
                at=datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                elapsed=round(time.monotonic() - self._started, 3),
                namespace=namespace,
                name=name,
                event=event,
            )
        )
        self._notify()

    async def wait_recorded(self, name: str, event: str) -> TimelineEntry:
        """Wait until the timeline has ``event`` for the object ``name`` (for tests: no polling)."""
        while True:
            for entry in self.timeline:
                if entry.name == name and entry.event == event:
                    return entry
            await self._changed.wait()

    async def wait_delay(self, which: str, since: float) -> None:
        """Wait until ``delays.<which>`` seconds have passed since ``since`` (a monotonic time).

        The delay is re-read whenever the faults change.
        """
        while True:
            remaining = since + getattr(self.faults.delays, which) - time.monotonic()
            if remaining <= 0:
                return
            event = self._changed
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for drops a cancel that
            # lands as the faults change, and a bring-up held here outlived its delete.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await event.wait()

    async def until(self, predicate: Callable[[Faults], bool]) -> None:
        """Wait until the faults satisfy ``predicate`` (lets a test lift a fault mid-run)."""
        while not predicate(self.faults):
            await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()
