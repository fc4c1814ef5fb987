"""The KubeFoundry flow: Install -> Deploy -> Wait Ready -> Inference -> Delete, for any provider.

KubeFoundry is the authority for its own answers (is the provider installed, is
the deployment Running, is it gone); the cluster is watched only to know *when*
to ask again, and to fail fast on what KubeFoundry hides (a workload whose pod
cannot pull its image stays ``Pending`` there for ever). What is provider-specific
(the install route, the custom resource, the labels, the serving Service, how
readiness reads) comes from a :class:`~orchestrator.flows.ProviderProfile`.

Everything this run creates is remembered, so that cleanup deletes exactly
that and nothing else: a deployment that existed before the run is reported,
never touched.
"""

from __future__ import annotations

import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio

from ..clients import (
    CRDS,
    EVENTS,
    PODS,
    ClientError,
    Condition,
    Conflict,
    DeploymentStatus,
    HTTPStatusError,
    InferenceClient,
    InferenceResult,
    InvalidCompletion,
    KubeClient,
    KubeFoundryClient,
    NotFound,
    RequestTimeout,
    ServerError,
    WatchEvent,
    WatchHub,
)
from ..engine import Phase, PhaseContext, PhaseFailed, PhaseRecord
from ..history import regression
from ._calls import call_backend, peer_failures_named, side_by_side
from ._diagnostics import collect_diagnostics
from ._once import OncePerRun
from ._pods import PullErrors, is_pod, pod_problem, pod_ready
from ._profile import Deployment, Owned, ProviderProfile, Readiness, Tracked
from ._pull import image_pulls
from ._pull import summary as pull_summary
from ._waiting import AskAgain, Stop, WatchSpec, pod_summary, wait_for

T = TypeVar("T")

#: Seconds an accepted delete has to show in the cluster (the workload gone, or a
#: deletionTimestamp on it) before the Delete phase calls it a 200 that deleted nothing.
DELETE_GRACE = 10.0
#: At most this many seconds of cleanup go to the backend's delete; the rest is kept for
#: deleting through Kubernetes when the backend fails, hangs or deletes nothing.
BACKEND_CLEANUP_SHARE_MAX = 30.0
#: Seconds before the backend is asked again after a 404 that the cluster contradicts, at
#: first and at most (doubling in between while the 404s go on).
AFTER_404_FIRST = 0.1
AFTER_404_MAX = 2.0
#: While the watches show an object that should be gone, the API server is asked again
#: at most this often: the watches' view is a hint, a fresh list the answer.
CONFIRM_EVERY = 2.0


@dataclass(frozen=True)
class FlowSettings:
    """What the flow needs to know besides its provider. Durations are seconds.

    ``namespace``, ``model`` and ``suite`` left unset take the profile's defaults
    (its default namespace and model, its provider id).
    """

    api_url: str
    namespace: str | None = None
    deployment_name: str = "integration-test-llama"
    model: str | None = None
    install_timeout: float = 180.0
    deploy_timeout: float = 60.0
    ready_timeout: float = 300.0
    inference_timeout: float = 120.0
    delete_timeout: float = 120.0
    prompt: str = "Say hello in exactly 3 words."
    max_tokens: int = 50
    loading_grace: float = 30.0
    #: The safety-net re-check while watching (``recheck_interval``): watches bring every
    #: change, so this only covers a watch that stalls without an error and what no
    #: Kubernetes object shows. Wait Ready and the chaos step use it as it is; the waits
    #: of Install and Delete use it capped at 5 s. Polling uses ``poll_interval`` instead.
    recheck: float = 30.0
    replicas: int = 1
    #: The JUnit testsuite name: the provider's id, or one per deployment when a run has
    #: several.
    suite: str | None = None
    #: "watch": wake on watch events (re-checking every ``recheck`` s as a safety net);
    #: "poll": ask every ``poll_interval`` s and watch nothing, to measure what watches buy.
    wait_strategy: str = "watch"
    poll_interval: float = 5.0
    #: A regular expression the answer to ``expect_prompt``, asked at temperature 0, must
    #: match (None: no such check). Off by default: only a model's user can say which
    #: answer proves the right model serves.
    expect_pattern: str | None = None
    expect_prompt: str = "What is the capital of France? Answer with one word."
    #: Fail Inference when latency exceeds this baseline by more than the percentage.
    latency_baseline_ms: float | None = None
    latency_regression_pct: float | None = None
    #: Between Wait Ready and Inference, delete the model pod and wait for its replacement:
    #: a serving stack that cannot survive losing a pod is not ready for production.
    chaos: bool = False


@dataclass
class _Created:
    """What this run made, and so what its cleanup may delete."""

    deployment: bool = False
    deleted: bool = False
    #: Why the backend's delete is not to be trusted with this deployment any more (it
    #: failed, hung, or answered 200 and deleted nothing): cleanup goes straight to
    #: Kubernetes.
    backend_delete_failed: str | None = None
    installed_provider: bool = False
    model_name: str | None = None
    owned: list[Owned] = field(default_factory=list)


class _Cluster:
    """The :class:`~orchestrator.flows.ClusterView` a readiness reading gets."""

    def __init__(self, flow: KubeFoundryFlow, *, fresh: bool = False) -> None:
        self._flow = flow
        self._fresh = fresh
        #: Whether an answer came from the watches' view rather than a fresh read.
        self.cached = False

    @property
    def kube(self) -> KubeClient:
        return self._flow.kube

    @property
    def api(self) -> KubeFoundryClient:
        return self._flow.api

    @property
    def deployment(self) -> Deployment:
        return self._flow.deployment

    async def pods(self) -> list[dict[str, Any]]:
        flow = self._flow
        pods = flow.profile.tracked(flow.deployment)[0]
        if not self._fresh:
            seen = flow._cached(pods)
            if seen is not None:
                self.cached = True
                return seen
        return await flow._objects(pods, not_older_than=flow._pods_version)

    async def workload(self) -> dict[str, Any] | None:
        flow = self._flow
        d, p = flow.deployment, flow.profile
        try:
            return await flow.kube.get(
                p.workload, d.name, d.namespace, not_older_than=flow._workload_version
            )
        except NotFound:
            return None

    async def leftovers(self) -> list[str]:
        return await self._flow.leftovers(owned=False)


class KubeFoundryFlow:
    """One deployment's lifecycle through KubeFoundry, as engine phases.

    The engine runs it like any flow (``name``, ``phases()``, ``properties()``,
    ``diagnose()``, ``cleanup()``, ``keep_hints()``). Flows of one run share the
    ``hub`` (one watch stream per resource type and namespace) and the
    ``install_gate`` (the provider is installed once per run).
    """

    def __init__(
        self,
        profile: ProviderProfile,
        settings: FlowSettings,
        *,
        api: KubeFoundryClient,
        kube: KubeClient,
        inference: InferenceClient,
        hub: WatchHub | None = None,
        install_gate: OncePerRun | None = None,
        on_retry: Callable[[str], None] | None = None,
    ) -> None:
        self.profile = profile
        #: Told, for the live console, of a failure the cluster retries on its own (an
        #: image pull): the run log has it too, but only at the end of a CI job's output.
        self.on_retry = on_retry
        self.settings = settings
        self.deployment = Deployment(
            name=settings.deployment_name,
            namespace=settings.namespace or profile.default_namespace,
            model=settings.model or profile.default_model,
            replicas=settings.replicas,
        )
        self.name = settings.suite or profile.provider
        self.hub = hub
        #: Shared by the flows of one run (see :meth:`install`).
        self.install_gate = install_gate
        self.api = api
        self.kube = kube
        self.inference = inference
        self.created = _Created()
        self._seen_pod_states: dict[str, str] = {}
        #: The resourceVersion of the last event this flow's waits saw on its pods. A
        #: read that confirms what the events showed asks for a state not older than it.
        self._pods_version: str | None = None
        #: The same for the workload (see :meth:`_Cluster.workload`).
        self._workload_version: str | None = None
        #: The pause before the backend is asked again after a 404 (see _backend_status).
        self._after_404 = AFTER_404_FIRST

    # -- the engine's view ----------------------------------------------------

    def phases(self) -> list[Phase]:
        s, d = self.settings, self.deployment
        named = peer_failures_named
        phases = [
            Phase(
                "install", f"Install {self.profile.title}", s.install_timeout, named(self.install)
            ),
            Phase("deploy", f"Deploy {d.model}", s.deploy_timeout, named(self.deploy)),
            Phase("wait_ready", "Wait Ready", s.ready_timeout, named(self.wait_ready)),
        ]
        if s.chaos:
            phases.append(
                Phase("chaos", "Chaos: restart model pod", s.ready_timeout, named(self.chaos))
            )
        phases += [
            Phase("inference", "Inference", s.inference_timeout, named(self.run_inference)),
            Phase("delete", "Delete", s.delete_timeout, named(self.delete)),
        ]
        return phases

    def properties(self) -> dict[str, str]:
        d = self.deployment
        return {
            "provider": self.profile.provider,
            "model": d.model,
            "namespace": d.namespace,
            "deployment": d.name,
            "api_url": self.settings.api_url,
            "inference_route": self.inference.route.kind,
        }

    def keep_hints(self) -> list[str]:
        if not self.created.deployment or self.created.deleted:
            return []
        return self.profile.keep_hints(self.deployment, self.settings.api_url)

    # -- phases ---------------------------------------------------------------

    async def install(self, ctx: PhaseContext) -> None:
        """Install the provider, once per run: flows running side by side share one install.

        The first flow to get here installs (or finds the provider installed) and waits
        until the backend says it is; the others wait for that answer and take it, so the
        backend sees one install and one status check instead of N racing on the same
        Helm release. If the first flow fails, the next one tries in its turn.
        """
        p = self.profile
        gate = self.install_gate
        if gate is None:
            await self._install(ctx)
            return
        proof = await gate.once(f"install:{p.provider}", self.name, lambda: self._install(ctx))
        if proof.here:
            return
        ctx.log(
            f"{p.title} is installed and its operator is running (the backend said so to "
            f"{proof.by} {proof.age:.1f} s ago, in this run)"
        )
        ctx.set_property(f"{p.provider}_checked_by", proof.by)
        if proof.value:
            ctx.set_property(f"{p.provider}_preinstalled", "true")

    async def _install(self, ctx: PhaseContext) -> bool:
        """Install and wait until the backend says installed; True if it already was.

        A provider whose version the backend looks up on GitHub (``version_env``) may
        leave the status and install routes without an answer (no timeout on that lookup,
        PROVIDERS.md): a request to them that times out says so, and how to pin it.
        """
        try:
            return await self._install_provider(ctx)
        except RequestTimeout as exc:
            p = self.profile
            if p.version_env is None or "/api/installation/providers/" not in exc.url:
                raise
            raise PhaseFailed(
                f"{type(exc).__name__}: {exc}; the backend's {p.provider} status and install "
                f"ask GitHub (releases/latest) for the {p.title} version, with no timeout: "
                f"without internet, make api.github.com fail fast (refused, not dropped) and "
                f"set {p.version_env} for the backend",
                timed_out=True,
            ) from None

    async def _install_provider(self, ctx: PhaseContext) -> bool:
        p = self.profile
        status = await call_backend(self.api.provider_status(p.provider))
        if status.installed:
            ctx.log(f"{p.title} is already installed and its operator is running")
            ctx.set_property(f"{p.provider}_preinstalled", "true")
            return True
        # A backend that cannot reach its cluster still answers 200, and its status then
        # says not installed (KUBEFOUNDRY.md): its cluster status says why, and helm is not
        # run against a cluster it cannot reach.
        cluster = await call_backend(self.api.cluster_status())
        if not cluster.connected:
            raise PhaseFailed(
                f"the backend reports {p.title} not installed ({status.message or 'no message'}), "
                "but it is not connected to the cluster "
                f"({cluster.error or 'no reason given'}): check the kubeconfig it runs with"
            )
        ctx.log(f"{p.title} not installed yet ({status.message or 'no message'}); installing")
        try:
            try:
                result = await call_backend(self.api.install_provider(p.provider))
            except Conflict as exc:
                ctx.log(f"install answered 409 ({exc.message}); retrying once with force=true")
                result = await call_backend(self.api.install_provider(p.provider, force=True))
        except HTTPStatusError as exc:
            raise PhaseFailed(
                f"{p.title} install failed: the backend answered {exc.status}: {exc.message}"
            ) from None
        if result.already_installed:
            ctx.log(f"the backend says {p.title} is already installed")
        else:
            self.created.installed_provider = True
            failed = [r for r in result.results if not r.success]
            if not result.success or failed:
                steps = ", ".join(f"{r.step}: {r.error or r.output}".strip() for r in failed)
                raise PhaseFailed(
                    f"{p.title} install failed: {result.message}{'; ' + steps if steps else ''}"
                )
            ctx.log(f"install started: {result.message}")

        async def installed() -> bool | None:
            st = await call_backend(self.api.provider_status(p.provider))
            ctx.progress(
                f"{p.title} status: installed={st.installed}, crdFound={st.crd_found}, "
                f"operatorRunning={st.operator_running}"
            )
            return True if st.installed else None

        ctx.note(f"the backend to report {p.title} installed")
        watches = [WatchSpec(CRDS, field_selector=f"metadata.name={p.crd_name}")]
        if p.operator_selector is not None:
            watches.insert(
                0, WatchSpec(PODS, p.operator_namespace, label_selector=p.operator_selector)
            )
        await self._wait_for(
            ctx, installed, recheck=min(self.settings.recheck, 5.0), watches=watches
        )
        ctx.log(f"{p.title} is installed and its operator is running")
        return False

    async def deploy(self, ctx: PhaseContext) -> None:
        d = self.deployment
        name = await self.profile.model_name(self.api, d)
        self.created.model_name = name
        ctx.set_property("served_model_name", name)
        ctx.log(f"{d.model} answers to model name {name!r}")

        try:
            existing = await call_backend(self.api.get_deployment(d.name, d.namespace))
        except NotFound:
            existing = None
        if existing is not None:
            raise PhaseFailed(
                f"deployment {d.name!r} already exists in namespace {d.namespace!r} "
                f"(phase {existing.phase}); it was not made by this run, so it is left alone. "
                f"Delete it, or choose another name with --deployment-name"
            )
        self.created.owned += await self.profile.prepare(self.kube, d, ctx.log)

        # From the moment the request leaves, the deployment may exist whatever comes back
        # (a 201 lost to a reset, a body that does not parse, a phase deadline): cleanup must
        # look for it. Only a clear refusal takes that back.
        self.created.deployment = True
        try:
            created = await call_backend(self.api.create_deployment(self.profile.create_body(d)))
        except Conflict as exc:
            if exc.after_retry:
                # An earlier attempt of ours reached the backend before the connection
                # failed: the object that now exists is the one this run asked for.
                ctx.log(f"create met 409 after a retry ({exc.message}); the deployment is ours")
                return
            self.created.deployment = False
            raise PhaseFailed(f"create answered 409: {exc.message}") from None
        except HTTPStatusError as exc:
            # A 4xx, or a 500 the backend gives as a refusal (an unknown provider), made
            # nothing; any other 5xx may have come after the object was made.
            if exc.status < 500 or (isinstance(exc, ServerError) and exc.refusal):
                self.created.deployment = False
            raise
        for warning in created.warnings or []:
            ctx.log(f"backend warning: {warning}")
        ctx.log(f"created deployment {created.name} in {created.namespace} ({created.message})")

    async def _backend_status(self, ctx: PhaseContext) -> DeploymentStatus:
        """The backend's status of the deployment; a 404 for a workload the cluster has is
        :class:`AskAgain`.

        The backend turns every failure to read a deployment (its Kubernetes client timing
        out, the API server busy) into ``404 Deployment not found`` (KUBEFOUNDRY.md), so a
        404 here is weighed before it ends the wait: from a backend that says it is not
        connected to the cluster, it fails the phase saying so; with the workload gone from
        the cluster, the deployment vanished; with the workload there, the 404 is a
        finding, and the wait asks again after a short pause that grows while the 404s
        go on (the cluster may not change again for a long while, so its events cannot be
        all that wakes the next try). The pause is the wait's, not a loop of its own here:
        a pod event that shows the model can never start still ends the wait at once.
        """
        d, p = self.deployment, self.profile
        try:
            status = await call_backend(self.api.get_deployment(d.name, d.namespace))
        except NotFound as exc:
            answer = f"GET /api/deployments/{d.name} answered 404 ({exc.message})"
        else:
            self._after_404 = AFTER_404_FIRST
            return status
        cluster, workload = await side_by_side(
            call_backend(self.api.cluster_status()), _Cluster(self).workload()
        )
        connection = cluster.result()
        if not connection.connected:
            raise PhaseFailed(
                f"{answer}, and the backend is not connected to the cluster "
                f"({connection.error or 'no reason given'}): its 404 proves nothing"
            )
        obj = workload.result()
        where = f"{p.workload_kind} {d.namespace}/{d.name}"
        if obj is None:
            raise PhaseFailed(
                f"{answer}, and the {where} is not in the cluster: the deployment "
                "vanished while the run waited for it"
            )
        deleting = (obj.get("metadata") or {}).get("deletionTimestamp")
        ctx.finding(
            "backend-404-while-deployed",
            f"{answer} while the {where} is in the cluster"
            + (f" (being deleted since {deleting})" if deleting else "")
            + ": the backend turns a failure to read it into 404",
            fact="docs/PROVIDERS.md#backend-404-while-deployed",
        )
        ctx.progress(f"{answer} while the {where} is in the cluster; asking again")
        after, self._after_404 = self._after_404, min(self._after_404 * 2, AFTER_404_MAX)
        raise AskAgain(after)

    async def _read_status(self, ctx: PhaseContext) -> tuple[DeploymentStatus, Readiness]:
        """The backend's status of the deployment and the profile's reading of it."""
        st = await self._backend_status(ctx)
        cluster = _Cluster(self)
        reading = await self.profile.readiness(st, cluster)
        if reading.ready and cluster.cached:
            # The watches' view woke the wait; a fresh read decides it: a stalled stream
            # must not call a deployment ready on the strength of pods it no longer sees.
            reading = await self.profile.readiness(st, _Cluster(self, fresh=True))
        if reading.findings:
            # A finding says the backend's answer disagrees with the cluster, but that answer
            # was read before the cluster was: the cluster may just have moved on (an operator
            # marking its resource failed in between). Decide on an answer read after it.
            st = await self._backend_status(ctx)
            reading = await self.profile.readiness(st, _Cluster(self, fresh=True))
        for finding in reading.findings:
            ctx.finding(finding.name, finding.message, finding.fact)
        return st, reading

    async def wait_ready(self, ctx: PhaseContext) -> None:
        d, p = self.deployment, self.profile
        last_line: list[str] = []
        pulls = PullErrors()

        def show_progress() -> None:
            # A pull the kubelet retries stays named, so that a timeout says which.
            parts = [*last_line[-1:], *filter(None, [pulls.retrying()])]
            if parts:
                ctx.progress("; ".join(parts))

        async def ready() -> bool | None:
            st, reading = await self._read_status(ctx)
            conds = ", ".join(_condition(c) for c in st.conditions) or "no conditions"
            line = f"deployment phase {st.phase}, ready {st.replicas.ready}/{st.replicas.desired} ({conds})"
            if not last_line or last_line[-1] != line:
                ctx.log(line)
                last_line.append(line)
            show_progress()
            if reading.failure is not None:
                # The failure last: it ends with what to do next.
                raise PhaseFailed(f"deployment {d.name} ({conds}): {reading.failure}")
            return True if reading.ready else None

        def inspect(event: WatchEvent) -> None:
            obj = event.object
            if not is_pod(obj):
                self._saw_workload(obj)
                return
            if not p.owns_pod(d, obj):
                return
            self._saw_pod(obj)
            summary = pod_summary(obj)
            name = obj.get("metadata", {}).get("name", "?")
            if self._seen_pod_states.get(name) != summary:
                self._seen_pod_states[name] = summary
                ctx.log(f"pod {summary}")
            problem = pod_problem(obj, p.fatal_waiting_reasons, pulls)
            for note in pulls.new_notes():
                self._retried(ctx, note)
            show_progress()
            if problem:
                raise Stop(problem)

        pods = p.tracked(d)[0]
        ctx.note(f"deployment {d.name} Running with a ready replica")
        try:
            await self._wait_for(
                ctx,
                ready,
                recheck=self.settings.recheck,
                inspect=inspect,
                watches=[
                    self._workload_by_name().watch(),
                    # Unless the profile reads pods, the backend's status is derived from
                    # the workload alone: pod events then only feed inspect().
                    pods.watch(wakes=p.readiness_reads_pods),
                ],
            )
        except Stop as stop:
            raise PhaseFailed(stop.reason) from None
        ctx.log("deployment is Running with a ready replica")
        await self._report_image_pull(ctx)

    async def _report_image_pull(self, ctx: PhaseContext) -> None:
        """The image pull the kubelet reported for this deployment's pods, as properties.

        A measurement, not a verdict: on a fresh node the model image is most of the
        wait, and a cache is the cheapest speed-up; reporting it lets a cold and a warm
        run be compared. Events that cannot be read are noted, and the phase passes.

        Only this deployment's pods' events are read, one field-selected list per pod
        (at once when there are several): a namespace-wide list would make every one of
        N flows sharing a namespace read every flow's events, N squared bytes in all.
        ``image_pulls`` still keeps only these pods' events, so a server that ignored
        the selector could not make us report another pod's pull.
        """
        d = self.deployment
        try:
            pods = {p.get("metadata", {}).get("name", "") for p in await _Cluster(self).pods()}
            pods.discard("")
            reads = await side_by_side(
                *(
                    self.kube.list(
                        EVENTS,
                        d.namespace,
                        field_selector=f"involvedObject.kind=Pod,involvedObject.name={name}",
                    )
                    for name in sorted(pods)
                )
            )
            events = [e for read in reads for e in read.result().get("items") or []]
        except ClientError as exc:
            ctx.log(f"image pull time not read: {exc}")
            return
        pulls = image_pulls(events, pods)
        for key, value in pull_summary(pulls).items():
            ctx.set_property(key, value)
        for pull in pulls:
            took = f" in {pull.seconds:.1f} s" if pull.seconds is not None else ""
            what = f"pulled{took}" if pull.state == "pulled" else "already present on the node"
            ctx.log(f"image {pull.image} on {pull.pod}: {what}")

    async def chaos(self, ctx: PhaseContext) -> None:
        """Delete the model pod, and wait until a new one is Ready and the backend says Running.

        The Inference phase that follows then proves the replacement serves. The old pods
        are told apart by uid, since a StatefulSet's replacement keeps the pod's name.
        """
        d, p = self.deployment, self.profile
        pods = p.tracked(d)[0]
        victims = {
            o["metadata"]["uid"]: o["metadata"]["name"]
            for o in await self._objects(pods)
            if not o["metadata"].get("deletionTimestamp")
        }
        if not victims:
            raise PhaseFailed(f"no model pod with label {pods.label_selector} to delete")
        for name in victims.values():
            try:
                await self.kube.delete(PODS, name, d.namespace)
            except NotFound:
                pass
            ctx.log(f"deleted pod {name}")

        ctx.note("a replacement model pod Ready and the deployment Running")

        async def recovered() -> bool | None:
            fresh = [
                o
                for o in await self._objects(pods, not_older_than=self._pods_version)
                if o["metadata"].get("uid") not in victims and pod_ready(o)
            ]
            if not fresh:
                ctx.progress("waiting for a replacement pod to become Ready")
                return None
            st, reading = await self._read_status(ctx)
            ctx.progress(
                f"replacement {fresh[0]['metadata']['name']} Ready; deployment phase "
                f"{st.phase}, ready {st.replicas.ready}/{st.replicas.desired}"
            )
            return True if reading.ready else None

        pulls = PullErrors()

        def inspect(event: WatchEvent) -> None:
            self._saw_pod(event.object)
            if event.object.get("metadata", {}).get("uid") in victims:
                return
            problem = pod_problem(event.object, p.fatal_waiting_reasons, pulls)
            for note in pulls.new_notes():
                self._retried(ctx, note)
            if problem:
                raise Stop(f"the replacement pod cannot start: {problem}")

        try:
            await self._wait_for(
                ctx,
                recovered,
                recheck=self.settings.recheck,
                inspect=inspect,
                watches=[pods.watch()],
            )
        except Stop as stop:
            raise PhaseFailed(stop.reason) from None
        ctx.log("a replacement pod is Ready and the deployment is Running again")

    async def run_inference(self, ctx: PhaseContext) -> None:
        """ONE streamed completion gives everything: time to first token, latency,
        tokens/s, and the verdict on the answer (the OpenAI schema and the quality gate:
        content, leaked template tokens, finish reason, usage, model name). Then, only
        when the user set an expectation, its deterministic prompt at temperature 0."""
        s, d = self.settings, self.deployment
        model = self.created.model_name
        if model is None:
            model = await self.profile.model_name(self.api, d)
        serving = self.profile.endpoint(d)
        target = self.inference.describe(d.namespace, serving.service, serving.port)
        ctx.log(f"POST {target} (model {model!r}, max_tokens {s.max_tokens}, streamed)")
        ctx.note(f"a chat completion from {model}")
        result = await self._complete(ctx, model, s.prompt)
        _report_completion(ctx, result)
        if s.expect_pattern is not None:
            await self._expectation(ctx, model, re.compile(s.expect_pattern))
        latency_ms = result.latency_s * 1000
        if s.latency_regression_pct is not None:
            reason = regression(latency_ms, s.latency_baseline_ms, s.latency_regression_pct)
            if reason:
                raise PhaseFailed(reason)
            base = f"{s.latency_baseline_ms:.0f} ms" if s.latency_baseline_ms else "none yet"
            ctx.log(
                f"latency {latency_ms:.0f} ms within {s.latency_regression_pct:g}% of the "
                f"baseline ({base})"
            )

    async def _complete(
        self,
        ctx: PhaseContext,
        model: str,
        prompt: str,
        *,
        temperature: float | None = None,
        pattern: re.Pattern[str] | None = None,
    ) -> InferenceResult:
        """One completion, judged; a failed check ends the phase naming every violation."""
        s, d = self.settings, self.deployment
        serving = self.profile.endpoint(d)
        try:
            return await self.inference.complete(
                namespace=d.namespace,
                service=serving.service,
                port=serving.port,
                model=model,
                prompt=prompt,
                max_tokens=s.max_tokens,
                loading_grace=s.loading_grace,
                on_wait=ctx.log,
                temperature=temperature,
                expect_pattern=pattern,
            )
        except InvalidCompletion as exc:
            checks = exc.checks or ["schema"]
            ctx.set_property("inference_failed_checks", ",".join(checks))
            ctx.log("the answer failed the quality gate:\n  " + "\n  ".join(exc.errors))
            n = len(exc.errors)
            raise PhaseFailed(
                f"invalid chat completion ({n} violation{'' if n == 1 else 's'} of "
                f"{', '.join(checks)}): " + "; ".join(exc.errors)
            ) from None
        except HTTPStatusError as exc:
            raise PhaseFailed(f"inference answered {exc.status}: {exc.message}") from None
        except ClientError as exc:
            raise PhaseFailed(f"inference failed: {exc}") from None

    async def _expectation(self, ctx: PhaseContext, model: str, pattern: re.Pattern[str]) -> None:
        prompt = self.settings.expect_prompt
        ctx.log(f"expectation: {prompt!r} at temperature 0 must match /{pattern.pattern}/")
        result = await self._complete(ctx, model, prompt, temperature=0, pattern=pattern)
        ctx.set_property("inference_expectation", "met")
        ctx.log(f"expectation met: {result.content[:200]!r}")

    async def delete(self, ctx: PhaseContext) -> None:
        d, p = self.deployment, self.profile
        try:
            answer = await call_backend(self.api.delete_deployment(d.name, d.namespace))
        except NotFound as exc:
            if exc.after_retry:
                # An earlier attempt of ours reached the backend before its connection
                # failed (a restart resets it after the delete was done): the 404 of the
                # retry is that delete's, not a deployment that vanished on its own.
                ctx.log(f"delete met 404 after a retry ({exc.message}); the deletion is ours")
                await self._wait_gone(ctx)
                self.created.deleted = True
                return
            raise PhaseFailed(
                f"DELETE answered 404 ({exc.message}): the deployment vanished "
                f"before this run deleted it"
            ) from None
        except (ClientError, PhaseFailed) as exc:
            # call_backend turns some client errors (a timeout, a broken body) into
            # PhaseFailed with advice: either way, the backend's delete did not work.
            self.created.backend_delete_failed = f"the backend's DELETE failed: {exc}"[:300]
            raise
        except BaseException:
            # Cut off while it hung (the deadline, a signal): cleanup will not wait again.
            self.created.backend_delete_failed = "the backend's DELETE gave no answer"
            raise
        ctx.log(f"delete accepted: {answer.message}")
        for found in await self.profile.after_delete(_Cluster(self)):
            ctx.finding(found.name, found.message, found.fact)
        # A delete that was accepted shows in the cluster at once: the workload is gone
        # or has a deletionTimestamp. One that still shows neither after a grace period
        # was a 200 that deleted nothing, a finding of its own rather than a timeout.
        grace = min(DELETE_GRACE, ctx.remaining() / 3)
        with anyio.move_on_after(grace) as waited:
            await self._wait_gone(ctx)
        if waited.cancelled_caught:
            untouched = await self._not_being_deleted()
            if untouched:
                self.created.backend_delete_failed = (
                    f"DELETE answered 200 but deleted nothing ({untouched})"
                )
                raise PhaseFailed(
                    f"DELETE answered 200 ({answer.message!r}), but after {grace:.0f} s the "
                    f"{p.workload_kind} {d.namespace}/{d.name} is not being deleted "
                    f"({untouched}): the backend deleted nothing; cleanup deletes it "
                    "through Kubernetes"
                )
            await self._wait_gone(ctx)
        self.created.deleted = True

    async def _not_being_deleted(self) -> str | None:
        """Why the workload is untouched by a delete (None if it is gone or going)."""
        d, p = self.deployment, self.profile
        try:
            obj = await self.kube.get(p.workload, d.name, d.namespace)
        except NotFound:
            return None
        if (obj.get("metadata") or {}).get("deletionTimestamp"):
            return None
        return "no deletionTimestamp"

    # -- failure path -----------------------------------------------------------

    async def diagnose(self, ctx: PhaseContext, failed: PhaseRecord) -> None:
        await collect_diagnostics(
            ctx.artifacts_dir / "diagnostics",
            kube=self.kube,
            api=self.api,
            namespace=self.deployment.namespace,
            deployment=self.deployment.name,
            workload=self.profile.workload,
            workload_kind=self.profile.workload_kind,
            log=ctx.log,
        )

    async def cleanup(self, ctx: PhaseContext) -> None:
        p = self.profile
        if self.created.installed_provider:
            ctx.log(
                f"{p.title} was installed by this run and is left installed (its uninstall "
                "deletes the whole operator namespace)"
            )
        if not self.created.deployment:
            ctx.log("this run created no deployment: nothing to delete")
        elif self.created.deleted:
            ctx.log("the Delete phase removed the deployment")
        else:
            await self._remove_deployment(ctx)
        await self._delete_owned(ctx)
        leftovers = await self.leftovers()
        if leftovers:
            raise PhaseFailed("left behind: " + "; ".join(leftovers))

    async def _remove_deployment(self, ctx: PhaseContext) -> None:
        """Delete the deployment: the backend's way first, then, if that fails, hangs or
        deletes nothing, directly through Kubernetes. Cleanup is the last line of defence,
        so it never depends on the backend it is testing: a CI cluster stays clean
        whatever the backend did.
        """
        d, p = self.deployment, self.profile
        if self.created.backend_delete_failed:
            ctx.log(f"{self.created.backend_delete_failed}; not asking the backend again")
        else:
            # The backend gets a share of cleanup's time: the rest stays for Kubernetes.
            share = min(BACKEND_CLEANUP_SHARE_MAX, ctx.remaining() / 3)
            ctx.log(f"deleting deployment {d.name} in {d.namespace} through the backend")
            outcome = "timed out"
            with anyio.move_on_after(share):
                try:
                    # Not through call_backend: a broken answer (wrong shape, not JSON) is
                    # a ClientError like any other failure here, and Kubernetes takes over.
                    await self.api.delete_deployment(d.name, d.namespace)
                except NotFound:
                    ctx.log("the backend no longer knows the deployment")
                except (ClientError, PhaseFailed) as exc:
                    # call_backend turns a refused token, a broken body or a timed-out
                    # answer into PhaseFailed: for cleanup, each is a backend that failed.
                    ctx.log(f"the backend's delete failed ({exc})")
                    outcome = "failed"
                if outcome != "failed":
                    await self._wait_gone(ctx, check_backend=False)
                    outcome = "done"
            if outcome == "done":
                self.created.deleted = True
                ctx.set_property("cleanup_deleted_by", "backend")
                return
            if outcome == "timed out":
                ctx.log(
                    f"the backend's delete did not remove the {p.workload_kind} within "
                    f"{share:.0f} s"
                )
        ctx.log(
            f"deleting the {p.workload_kind}, then what carries the deployment's labels, "
            "directly through Kubernetes"
        )
        await self._delete_workloads()
        await self._delete_tracked(ctx)
        await self._wait_gone(ctx, check_backend=False)
        self.created.deleted = True
        ctx.set_property("cleanup_deleted_by", "kubernetes")

    async def _delete_tracked(self, ctx: PhaseContext) -> None:
        """Delete the pods and Services that carry the deployment's labels (an operator
        that is gone or broken would leave them), after the workload that owns them."""
        d, p = self.deployment, self.profile
        for t in p.tracked(d):
            for obj in await self._objects(t):
                name = obj["metadata"]["name"]
                try:
                    await self.kube.delete(t.resource, name, d.namespace)
                    ctx.log(f"deleted {t.kind} {d.namespace}/{name}")
                except NotFound:
                    pass

    async def _delete_workloads(self) -> None:
        """Delete the workload through Kubernetes, by name and by KubeFoundry's labels."""
        d, p = self.deployment, self.profile
        labelled = await self.kube.list(
            p.workload, d.namespace, label_selector=p.workload_selector(d)
        )
        names = {d.name, *(o["metadata"]["name"] for o in labelled.get("items") or [])}
        for name in sorted(names):
            try:
                await self.kube.delete(p.workload, name, d.namespace)
            except NotFound:
                pass

    async def _delete_owned(self, ctx: PhaseContext) -> None:
        """Delete what the profile made before the create (a Secret), once nothing uses it."""
        for obj in self.created.owned:
            try:
                await self.kube.delete(obj.resource, obj.name, obj.namespace)
                ctx.log(f"deleted {obj.kind} {obj.namespace}/{obj.name}")
            except NotFound:
                pass

    async def leftovers(self, *, owned: bool = True) -> list[str]:
        """What of this run's is still in the cluster: the leak check.

        Everything that carries the run's labels counts, not just the objects the flow knows
        by name: a Service or a pod that the provider's operator forgot to delete is a leak.
        ``owned=False`` leaves out what the profile made before the create (a Secret),
        which is deleted only once the deployment is gone.
        """
        d, p = self.deployment, self.profile
        mine = self.created.owned if owned else []
        if not self.created.deployment and not mine:
            return []
        tracked = [self._workload_by_label(), *p.tracked(d)]
        # Independent questions, asked side by side: one round trip. The workloads are
        # those with our label, and ours by name whatever its labels say.
        named, *listed = await side_by_side(
            self.kube.get(p.workload, d.name, d.namespace),
            *(self._objects(t) for t in tracked),
            *(self._owned_still_there(o) for o in mine),
        )
        workloads = list(listed[0].result())
        try:
            workloads.append(named.result())
        except NotFound:
            pass
        out = [
            _leftover(p.workload_kind, w)
            for w in {w["metadata"]["name"]: w for w in workloads}.values()
        ]
        for t, outcome in zip(tracked[1:], listed[1 : len(tracked)], strict=True):
            out += [_leftover(t.kind, o) for o in outcome.result()]
        out += [line for outcome in listed[len(tracked) :] if (line := outcome.result())]
        # An object two of the profile's selectors find (a Service by its label and by
        # its name) is one leftover.
        return list(dict.fromkeys(out))

    async def _owned_still_there(self, obj: Owned) -> str:
        try:
            await self.kube.get(obj.resource, obj.name, obj.namespace)
        except NotFound:
            return ""
        return f"{obj.kind} {obj.namespace}/{obj.name}"

    # -- helpers ----------------------------------------------------------------

    def _workload_by_name(self) -> Tracked:
        d, p = self.deployment, self.profile
        return Tracked(
            p.workload_kind, p.workload, d.namespace, field_selector=f"metadata.name={d.name}"
        )

    def _workload_by_label(self) -> Tracked:
        d, p = self.deployment, self.profile
        return Tracked(
            p.workload_kind, p.workload, d.namespace, label_selector=p.workload_selector(d)
        )

    def _cached(self, t: Tracked) -> list[dict[str, Any]] | None:
        """The tracked objects as the shared watches last saw them; None without a whole view.

        A hint that may wake or keep a wait going, never the answer that ends it: a
        stream can stall without knowing it, and its view then stays as it was.
        """
        if self.hub is None or self.settings.wait_strategy != "watch":
            return None
        seen = self.hub.known(
            t.resource,
            t.namespace,
            label_selector=t.label_selector,
            field_selector=t.field_selector,
        )
        return None if seen is None else t.select(seen)

    def _retried(self, ctx: PhaseContext, note: str) -> None:
        """A failure the cluster retries on its own, in the run log and the live console."""
        ctx.log(note)
        if self.on_retry is not None:
            self.on_retry(note)

    def _saw_pod(self, pod: dict[str, Any]) -> None:
        """Note the resourceVersion of a pod event a wait saw (see ``_pods_version``)."""
        self._pods_version = pod["metadata"].get("resourceVersion") or self._pods_version

    def _saw_workload(self, obj: dict[str, Any]) -> None:
        """Note the resourceVersion of an event a wait saw on the workload."""
        meta = obj.get("metadata") or {}
        kind = obj.get("kind", self.profile.workload_kind)
        if kind == self.profile.workload_kind and meta.get("name") == self.deployment.name:
            self._workload_version = meta.get("resourceVersion") or self._workload_version

    async def _objects(
        self, t: Tracked, *, fresh: bool = True, not_older_than: str | None = None
    ) -> list[dict[str, Any]]:
        """The tracked objects: listed now, or (``fresh=False``) as the watches last saw them.

        ``not_older_than`` (the resourceVersion of the last event a wait saw on them) is
        for a read that confirms what events showed: the API server answers from its own
        watch cache, at least that new, instead of a quorum read from etcd. Still the
        server's view, not the stream's: a stream of ours that stalled is caught all the
        same, since the server's cache is fed by its own watch on etcd. Reads that decide
        "gone" or "nothing left behind" (the leak check) pass none: there no event is
        being confirmed, and they must see the latest state etcd holds.
        """
        if not fresh and (seen := self._cached(t)) is not None:
            return seen
        listing = await self.kube.list(
            t.resource,
            t.namespace,
            label_selector=t.label_selector,
            field_selector=t.field_selector,
            not_older_than=not_older_than,
        )
        return t.select(listing.get("items") or [])

    async def _wait_for(
        self,
        ctx: PhaseContext,
        check: Callable[[], Awaitable[T | None]],
        *,
        watches: list[WatchSpec],
        recheck: float,
        inspect: Callable[[WatchEvent], None] | None = None,
    ) -> T:
        """``wait_for`` under the configured strategy: shared watches, or plain polling."""
        if self.settings.wait_strategy == "poll":
            watches, recheck = [], self.settings.poll_interval
        return await wait_for(
            check,
            kube=self.kube,
            watches=watches,
            recheck=recheck,
            inspect=inspect,
            on_note=ctx.log,
            hub=self.hub if watches else None,
        )

    async def _wait_gone(self, ctx: PhaseContext, *, check_backend: bool = True) -> None:
        d, p = self.deployment, self.profile
        watched = [self._workload_by_name(), *p.tracked(d)]
        ctx.note(f"the {p.workload_kind} and its objects to be gone")

        confirmed_at = -math.inf

        async def gone() -> bool | None:
            nonlocal confirmed_at
            # The shared watches wake this wait and, while they still show something, spare
            # the API server a list per event. But they only ever hint: "gone" is decided by
            # a fresh list, and so is "still there" once the last list is CONFIRM_EVERY s old,
            # since a stream that stalls without knowing it keeps showing what was there.
            seen = [self._cached(t) for t in watched]
            still = [
                _leftover(t.kind, o)
                for t, objs in zip(watched, seen, strict=True)
                for o in objs or []
            ]
            if still and anyio.current_time() - confirmed_at < CONFIRM_EVERY:
                ctx.progress("waiting for deletion; still there: " + "; ".join(still))
                return None
            confirmed_at = anyio.current_time()
            left = await self.leftovers(owned=False)
            if left:
                ctx.progress("waiting for deletion; still there: " + "; ".join(left))
                return None
            if still and self.hub is not None:
                # The server has none of it, the watches still show some: they are stuck.
                for t, objs in zip(watched, seen, strict=True):
                    if objs:
                        self.hub.resync(
                            t.resource,
                            t.namespace,
                            label_selector=t.label_selector,
                            field_selector=t.field_selector,
                            reason="still showed objects a fresh list no longer has",
                        )
            return True

        await self._wait_for(
            ctx,
            gone,
            recheck=min(self.settings.recheck, 5.0),
            watches=[t.watch() for t in watched],
        )
        names = [f"the {p.workload_kind}", *(f"its {t.kind.lower()}s" for t in watched[1:])]
        ctx.log(
            f"{', '.join(names[:-1])} and {names[-1]} are gone"
            if len(names) > 1
            else f"{names[0]} is gone"
        )
        if check_backend:
            await self._wait_backend_forgets(ctx)

    async def _wait_backend_forgets(self, ctx: PhaseContext) -> None:
        """Ask until GET answers 404, from a backend that is connected to the cluster."""
        d = self.deployment
        ctx.note(f"GET {d.name} to answer 404")
        delay = 0.1
        while True:
            # The cluster status only matters for a 404, but asking both at once saves a
            # round trip where it counts: at the end of every flow.
            got, connected = await side_by_side(
                call_backend(self.api.get_deployment(d.name, d.namespace)),
                call_backend(self.api.cluster_status()),
            )
            try:
                st = got.result()
            except NotFound:
                cluster = connected.result()
                if not cluster.connected:
                    raise PhaseFailed(
                        "the backend answers 404, but it is not connected to the "
                        f"cluster ({cluster.error or 'no reason given'}), so the "
                        "404 proves nothing"
                    ) from None
                ctx.log("GET answers 404: the backend no longer knows the deployment")
                return
            ctx.progress(f"deleted objects are gone, but GET still answers 200 (phase {st.phase})")
            await anyio.sleep(delay)
            delay = min(delay * 2, 2.0)


def _report_completion(ctx: PhaseContext, result: InferenceResult) -> None:
    """The answer's timing and size as JUnit properties, and one line for the log."""
    ctx.set_property("inference_latency_ms", f"{result.latency_s * 1000:.0f}")
    ctx.set_property("inference_streamed", str(result.streamed).lower())
    if result.ttft_s is not None:
        ctx.set_property("time_to_first_token_ms", f"{result.ttft_s * 1000:.0f}")
    if result.completion_tokens is not None:
        ctx.set_property("prompt_tokens", str(result.prompt_tokens))
        ctx.set_property("completion_tokens", str(result.completion_tokens))
    if result.tokens_per_second is not None:
        ctx.set_property("tokens_per_second", f"{result.tokens_per_second:.1f}")
    first = (
        f", first token after {result.ttft_s * 1000:.0f} ms" if result.ttft_s is not None else ""
    )
    ctx.log(
        f"answer in {result.latency_s * 1000:.0f} ms{first}, after {result.attempts} "
        f"attempt(s), passed every check: {result.content[:200]!r} "
        f"(finish_reason {result.response.choices[0].finish_reason})"
    )


def _condition(c: Condition) -> str:
    """``Type=Status``, with the reason and message of one that is not True: a failing
    KAITO Workspace stays Pending in the backend, and only its conditions say why."""
    line = f"{c.type}={c.status}"
    why = ": ".join(x for x in (c.reason, c.message) if x)
    if c.status != "True" and why:
        line += f" ({why[:200]})"
    return line


def _leftover(kind: str, obj: dict[str, Any]) -> str:
    """One object that should be gone, with what holds it back when it is being deleted."""
    meta = obj.get("metadata", {})
    line = f"{kind} {meta.get('namespace')}/{meta.get('name')}"
    if kind not in ("Pod", "Service"):
        line += (
            f" (finalizers {meta.get('finalizers') or []}, deleting since "
            f"{meta.get('deletionTimestamp') or 'never'})"
        )
    return line
