"""The KAITO flow: Install KAITO -> Deploy -> Wait Ready -> Inference -> Delete.

KubeFoundry is the authority for its own answers (is KAITO installed, is the
deployment Running, is it gone); the cluster is watched only to know *when* to
ask again, and to fail fast on what KubeFoundry hides (a Workspace whose pod
cannot pull its image stays ``Pending`` there forever).

Everything this run creates is remembered, so that cleanup deletes exactly
that and nothing else: a deployment that existed before the run is reported,
never touched.
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass, field
from typing import Any

import anyio

from ..clients import (
    CRDS,
    EVENTS,
    PODS,
    SERVICES,
    ClientError,
    Conflict,
    HTTPStatusError,
    InferenceClient,
    InvalidCompletion,
    KubeClient,
    KubeFoundryClient,
    NotFound,
    Resource,
    ResponseFormatError,
    Unauthorized,
    WatchEvent,
    WatchHub,
)
from ..engine import Phase, PhaseContext, PhaseFailed, PhaseRecord
from ..history import regression
from ._diagnostics import collect_diagnostics
from ._waiting import Stop, WatchSpec, pod_summary, wait_for

WORKSPACES = Resource("kaito.sh", "v1beta1", "workspaces")
WORKSPACE_CRD = "workspaces.kaito.sh"
OPERATOR_NAMESPACE = "kaito-workspace"
OPERATOR_SELECTOR = "app.kubernetes.io/name=kaito-workspace"
PROVIDER = "kaito"

#: Container states that no amount of waiting will fix.
FATAL_WAITING_REASONS = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "ErrImageNeverPull",
        "CrashLoopBackOff",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)


@dataclass(frozen=True)
class KaitoSettings:
    """What the flow needs to know. Durations are seconds."""

    api_url: str
    namespace: str = "kaito-workspace"
    deployment_name: str = "integration-test-llama"
    model: str = "llama3.2:1b"
    install_timeout: float = 180.0
    deploy_timeout: float = 60.0
    ready_timeout: float = 300.0
    inference_timeout: float = 120.0
    delete_timeout: float = 120.0
    prompt: str = "Say hello in exactly 3 words."
    max_tokens: int = 50
    loading_grace: float = 30.0
    service_port: int = 80
    #: The safety-net re-check while watching: watches bring every change, so this only
    #: covers what no Kubernetes object shows. Polling uses ``poll_interval`` instead.
    recheck: float = 30.0
    replicas: int = 1
    #: The JUnit testsuite name: "kaito", or one per deployment when a run has several.
    suite: str = "kaito"
    #: "watch": wake on watch events (re-checking every ``recheck`` s as a safety net);
    #: "poll": ask every ``poll_interval`` s and watch nothing, to measure what watches buy.
    wait_strategy: str = "watch"
    poll_interval: float = 5.0
    #: Time to first token from a second, streamed completion.
    measure_ttft: bool = True
    #: Fail Inference when latency exceeds this baseline by more than the percentage.
    latency_baseline_ms: float | None = None
    latency_regression_pct: float | None = None
    #: Between Wait Ready and Inference, delete the model pod and wait for its replacement:
    #: a serving stack that cannot survive losing a pod is not ready for production.
    chaos: bool = False

    def deployment_body(self) -> dict[str, Any]:
        """The create request, as the plan sends it."""
        return {
            "name": self.deployment_name,
            "namespace": self.namespace,
            "provider": PROVIDER,
            "modelSource": "premade",
            "premadeModel": self.model,
            "ggufRunMode": "direct",
            "computeType": "cpu",
            "replicas": self.replicas,
        }


@dataclass
class InstallGate:
    """Shared by the flows of one run so that KAITO is installed once (see ``install``)."""

    lock: anyio.Lock = field(default_factory=anyio.Lock)
    #: The flow whose Install phase proved KAITO installed ("" until one has), and when
    #: (monotonic).
    proved_by: str = ""
    proved_at: float = 0.0
    preinstalled: bool = False


@dataclass
class _Created:
    """What this run made, and so what its cleanup may delete."""

    deployment: bool = False
    deleted: bool = False
    installed_kaito: bool = False
    model_name: str | None = None
    notes: list[str] = field(default_factory=list)


class KaitoFlow:
    """The KubeFoundry + KAITO lifecycle as engine phases."""

    name = "kaito"

    def __init__(
        self,
        settings: KaitoSettings,
        *,
        api: KubeFoundryClient,
        kube: KubeClient,
        inference: InferenceClient,
        hub: WatchHub | None = None,
        install_gate: InstallGate | None = None,
    ) -> None:
        self.name = settings.suite
        self.hub = hub
        #: Shared by the flows of one run (see :meth:`install`).
        self.install_gate = install_gate
        self.settings = settings
        self.api = api
        self.kube = kube
        self.inference = inference
        self.created = _Created()
        self._seen_pod_states: dict[str, str] = {}

    # -- the engine's view ----------------------------------------------------

    def phases(self) -> list[Phase]:
        s = self.settings
        phases = [
            Phase("install", "Install KAITO", s.install_timeout, self.install),
            Phase("deploy", f"Deploy {s.model}", s.deploy_timeout, self.deploy),
            Phase("wait_ready", "Wait Ready", s.ready_timeout, self.wait_ready),
        ]
        if s.chaos:
            phases.append(Phase("chaos", "Chaos: restart model pod", s.ready_timeout, self.chaos))
        phases += [
            Phase("inference", "Inference", s.inference_timeout, self.run_inference),
            Phase("delete", "Delete", s.delete_timeout, self.delete),
        ]
        return phases

    def properties(self) -> dict[str, str]:
        s = self.settings
        return {
            "provider": PROVIDER,
            "model": s.model,
            "namespace": s.namespace,
            "deployment": s.deployment_name,
            "api_url": s.api_url,
            "inference_route": self.inference.route.kind,
        }

    def keep_hints(self) -> list[str]:
        s = self.settings
        ns, name = shlex.quote(s.namespace), shlex.quote(s.deployment_name)
        if not self.created.deployment or self.created.deleted:
            return []
        return [
            f"kubectl -n {ns} get workspace {name} -o yaml",
            f"kubectl -n {ns} describe pods -l kaito.sh/workspace={name}",
            f"kubectl -n {ns} logs -l kaito.sh/workspace={name} --tail=100",
            f"kubectl -n {ns} get events --sort-by=.lastTimestamp",
            f"curl -X DELETE '{s.api_url}/api/deployments/{s.deployment_name}?namespace={s.namespace}'",
        ]

    # -- phases ---------------------------------------------------------------

    async def install(self, ctx: PhaseContext) -> None:
        """Install KAITO, once per run: flows running side by side share one install.

        The first flow to get here installs (or finds KAITO installed) and waits until
        the backend says it is; the others wait for that answer and take it, so the
        backend sees one install and one status check instead of N racing on the same
        Helm release. If the first flow fails, the next one tries in its turn.
        """
        gate = self.install_gate
        if gate is None:
            await self._install(ctx)
            return
        async with gate.lock:
            if not gate.proved_by:
                await self._install(ctx)
                gate.proved_by, gate.proved_at = self.settings.suite, time.monotonic()
                return
        ago = time.monotonic() - gate.proved_at
        ctx.log(
            f"KAITO is installed and its operator is running (the backend said so to "
            f"{gate.proved_by} {ago:.1f} s ago, in this run)"
        )
        ctx.set_property("kaito_checked_by", gate.proved_by)
        if gate.preinstalled:
            ctx.set_property("kaito_preinstalled", "true")

    async def _install(self, ctx: PhaseContext) -> None:
        status = await self._call(ctx, self.api.provider_status(PROVIDER))
        if status.installed:
            ctx.log("KAITO is already installed and its operator is running")
            ctx.set_property("kaito_preinstalled", "true")
            if self.install_gate is not None:
                self.install_gate.preinstalled = True
            return
        ctx.log(f"KAITO not installed yet ({status.message or 'no message'}); installing")
        try:
            try:
                result = await self._call(ctx, self.api.install_provider(PROVIDER))
            except Conflict as exc:
                ctx.log(f"install answered 409 ({exc.message}); retrying once with force=true")
                result = await self._call(ctx, self.api.install_provider(PROVIDER, force=True))
        except HTTPStatusError as exc:
            raise PhaseFailed(
                f"KAITO install failed: the backend answered {exc.status}: {exc.message}"
            ) from None
        if result.already_installed:
            ctx.log("the backend says KAITO is already installed")
        else:
            self.created.installed_kaito = True
            failed = [r for r in result.results if not r.success]
            if not result.success or failed:
                steps = ", ".join(f"{r.step}: {r.error or r.output}".strip() for r in failed)
                raise PhaseFailed(
                    f"KAITO install failed: {result.message}{'; ' + steps if steps else ''}"
                )
            ctx.log(f"install started: {result.message}")

        async def installed() -> bool | None:
            st = await self._call(ctx, self.api.provider_status(PROVIDER))
            ctx.progress(
                f"KAITO status: installed={st.installed}, crdFound={st.crd_found}, "
                f"operatorRunning={st.operator_running}"
            )
            return True if st.installed else None

        await self._wait_for(
            installed,
            kube=self.kube,
            recheck=min(self.settings.recheck, 5.0),
            on_note=ctx.log,
            watches=[
                WatchSpec(PODS, OPERATOR_NAMESPACE, label_selector=OPERATOR_SELECTOR),
                WatchSpec(CRDS, field_selector=f"metadata.name={WORKSPACE_CRD}"),
            ],
        )
        ctx.log("KAITO is installed and its operator is running")

    async def deploy(self, ctx: PhaseContext) -> None:
        s = self.settings
        try:
            entry = await self._call(ctx, self.api.catalog_model(s.model))
        except NotFound:
            raise PhaseFailed(f"model {s.model!r} is not in the backend's catalog") from None
        self.created.model_name = entry.model_name
        ctx.set_property("served_model_name", entry.model_name)
        ctx.log(f"catalog: {s.model} answers to model name {entry.model_name!r}")

        try:
            existing = await self._call(
                ctx, self.api.get_deployment(s.deployment_name, s.namespace)
            )
        except NotFound:
            existing = None
        if existing is not None:
            raise PhaseFailed(
                f"deployment {s.deployment_name!r} already exists in namespace {s.namespace!r} "
                f"(phase {existing.phase}); it was not made by this run, so it is left alone. "
                f"Delete it, or choose another name with --deployment-name"
            )

        sent_before = self.api.requests_sent
        # From the moment the request leaves, the deployment may exist whatever comes back
        # (a 201 lost to a reset, a body that does not parse, a phase deadline): cleanup must
        # look for it. Only a clear refusal takes that back.
        self.created.deployment = True
        try:
            created = await self._call(ctx, self.api.create_deployment(s.deployment_body()))
        except Conflict as exc:
            if self.api.requests_sent - sent_before > 1:
                # An earlier attempt of ours reached the backend before the connection
                # failed: the object that now exists is the one this run asked for.
                ctx.log(f"create met 409 after a retry ({exc.message}); the deployment is ours")
                return
            self.created.deployment = False
            raise PhaseFailed(f"create answered 409: {exc.message}") from None
        except HTTPStatusError as exc:
            if exc.status < 500:
                self.created.deployment = False
            raise
        for warning in created.warnings or []:
            ctx.log(f"backend warning: {warning}")
        ctx.log(f"created deployment {created.name} in {created.namespace} ({created.message})")

    async def wait_ready(self, ctx: PhaseContext) -> None:
        s = self.settings
        last_phase: list[str] = []

        async def ready() -> bool | None:
            st = await self._call(
                ctx,
                self.api.get_deployment(s.deployment_name, s.namespace),
                not_found_means_gone=False,
            )
            conds = ", ".join(f"{c.type}={c.status}" for c in st.conditions) or "no conditions"
            line = f"deployment phase {st.phase}, ready {st.replicas.ready}/{st.replicas.desired} ({conds})"
            if not last_phase or last_phase[-1] != line:
                ctx.log(line)
                last_phase.append(line)
            ctx.progress(line)
            if st.phase == "Failed":
                raise PhaseFailed(f"deployment {s.deployment_name} is Failed ({conds})")
            return True if st.phase == "Running" and st.replicas.ready >= 1 else None

        def inspect(event: WatchEvent) -> None:
            obj = event.object
            if obj.get("kind") == "Workspace" or "inference" in obj:
                return
            summary = pod_summary(obj)
            name = obj.get("metadata", {}).get("name", "?")
            if self._seen_pod_states.get(name) != summary:
                self._seen_pod_states[name] = summary
                ctx.log(f"pod {summary}")
            problem = pod_problem(obj)
            if problem:
                raise Stop(problem)

        try:
            await self._wait_for(
                ready,
                kube=self.kube,
                recheck=s.recheck,
                inspect=inspect,
                on_note=ctx.log,
                watches=[
                    WatchSpec(
                        WORKSPACES, s.namespace, field_selector=f"metadata.name={s.deployment_name}"
                    ),
                    # The backend derives the status from the Workspace alone
                    # (pods are not consulted): pod events only feed inspect().
                    WatchSpec(
                        PODS,
                        s.namespace,
                        label_selector=f"kaito.sh/workspace={s.deployment_name}",
                        wakes=False,
                    ),
                ],
            )
        except Stop as stop:
            raise PhaseFailed(stop.reason) from None
        ctx.log("deployment is Running with a ready replica")

    async def chaos(self, ctx: PhaseContext) -> None:
        """Delete the model pod, and wait until a new one is Ready and the backend says Running.

        The Inference phase that follows then proves the replacement serves. The old pods
        are told apart by uid, since a StatefulSet's replacement keeps the pod's name.
        """
        s = self.settings
        selector = f"kaito.sh/workspace={s.deployment_name}"
        listing = await self.kube.list(PODS, s.namespace, label_selector=selector)
        victims = {
            p["metadata"]["uid"]: p["metadata"]["name"]
            for p in listing.get("items") or []
            if not p["metadata"].get("deletionTimestamp")
        }
        if not victims:
            raise PhaseFailed(f"no model pod with label {selector} to delete")
        for name in victims.values():
            try:
                await self.kube.delete(PODS, name, s.namespace)
            except NotFound:
                pass
            ctx.log(f"deleted pod {name}")

        async def recovered() -> bool | None:
            pods = await self.kube.list(PODS, s.namespace, label_selector=selector)
            fresh = [
                p
                for p in pods.get("items") or []
                if p["metadata"].get("uid") not in victims and _pod_ready(p)
            ]
            if not fresh:
                ctx.progress("waiting for a replacement pod to become Ready")
                return None
            st = await self._call(
                ctx,
                self.api.get_deployment(s.deployment_name, s.namespace),
                not_found_means_gone=False,
            )
            ctx.progress(
                f"replacement {fresh[0]['metadata']['name']} Ready; deployment phase "
                f"{st.phase}, ready {st.replicas.ready}/{st.replicas.desired}"
            )
            return True if st.phase == "Running" and st.replicas.ready >= 1 else None

        def inspect(event: WatchEvent) -> None:
            if event.object.get("metadata", {}).get("uid") in victims:
                return
            problem = pod_problem(event.object)
            if problem:
                raise Stop(f"the replacement pod cannot start: {problem}")

        try:
            await self._wait_for(
                recovered,
                kube=self.kube,
                recheck=s.recheck,
                inspect=inspect,
                on_note=ctx.log,
                watches=[WatchSpec(PODS, s.namespace, label_selector=selector)],
            )
        except Stop as stop:
            raise PhaseFailed(stop.reason) from None
        ctx.log("a replacement pod is Ready and the deployment is Running again")

    async def run_inference(self, ctx: PhaseContext) -> None:
        s = self.settings
        model = self.created.model_name
        if model is None:
            model = (await self._call(ctx, self.api.catalog_model(s.model))).model_name
        target = self.inference.describe(s.namespace, s.deployment_name, s.service_port)
        ctx.log(f"POST {target} (model {model!r}, max_tokens {s.max_tokens})")
        try:
            result = await self.inference.chat(
                namespace=s.namespace,
                service=s.deployment_name,
                port=s.service_port,
                model=model,
                prompt=s.prompt,
                max_tokens=s.max_tokens,
                loading_grace=s.loading_grace,
                on_wait=ctx.log,
            )
        except InvalidCompletion as exc:
            ctx.log("schema errors:\n  " + "\n  ".join(exc.errors))
            raise PhaseFailed(
                f"invalid chat completion ({len(exc.errors)} errors): " + "; ".join(exc.errors)
            ) from None
        except HTTPStatusError as exc:
            raise PhaseFailed(f"inference answered {exc.status}: {exc.message}") from None
        except ClientError as exc:
            raise PhaseFailed(f"inference failed: {exc}") from None
        ctx.set_property("inference_latency_ms", f"{result.latency_s * 1000:.0f}")
        if result.completion_tokens is not None:
            ctx.set_property("prompt_tokens", str(result.prompt_tokens))
            ctx.set_property("completion_tokens", str(result.completion_tokens))
            if result.latency_s > 0:
                ctx.set_property(
                    "tokens_per_second", f"{result.completion_tokens / result.latency_s:.1f}"
                )
        ctx.log(
            f"answer in {result.latency_s * 1000:.0f} ms after {result.attempts} attempt(s): "
            f"{result.content[:200]!r} (finish_reason {result.response.choices[0].finish_reason})"
        )
        if s.measure_ttft:
            await self._measure_ttft(ctx, model)
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

    async def _measure_ttft(self, ctx: PhaseContext, model: str) -> None:
        """Time to first token, from the same completion streamed.

        A measurement, not a verdict: the plan's check is the non-streamed answer above,
        so a server that cannot stream is noted in the log and the phase still passes.
        """
        s = self.settings
        try:
            timing = await self.inference.stream(
                namespace=s.namespace,
                service=s.deployment_name,
                port=s.service_port,
                model=model,
                prompt=s.prompt,
                max_tokens=s.max_tokens,
            )
        except ClientError as exc:
            ctx.log(f"time to first token not measured: {exc}")
            return
        ctx.set_property("time_to_first_token_ms", f"{timing.ttft_s * 1000:.0f}")
        ctx.set_property("stream_total_ms", f"{timing.total_s * 1000:.0f}")
        if timing.tokens_per_second is not None:
            ctx.set_property("stream_tokens_per_second", f"{timing.tokens_per_second:.1f}")
        ctx.log(
            f"streamed: first token after {timing.ttft_s * 1000:.0f} ms, "
            f"{timing.content_chunks} content chunks in {timing.total_s * 1000:.0f} ms"
        )

    async def delete(self, ctx: PhaseContext) -> None:
        s = self.settings
        try:
            answer = await self._call(
                ctx, self.api.delete_deployment(s.deployment_name, s.namespace)
            )
        except NotFound as exc:
            raise PhaseFailed(
                f"DELETE answered 404 ({exc.message}): the deployment vanished "
                f"before this run deleted it"
            ) from None
        ctx.log(f"delete accepted: {answer.message}")
        await self._wait_gone(ctx)
        self.created.deleted = True

    # -- failure path -----------------------------------------------------------

    async def diagnose(self, ctx: PhaseContext, failed: PhaseRecord) -> None:
        await collect_diagnostics(
            ctx.artifacts_dir / "diagnostics",
            kube=self.kube,
            api=self.api,
            namespace=self.settings.namespace,
            deployment=self.settings.deployment_name,
            workspaces=WORKSPACES,
            log=ctx.log,
        )

    async def cleanup(self, ctx: PhaseContext) -> None:
        s = self.settings
        if self.created.installed_kaito:
            ctx.log(
                "KAITO was installed by this run and is left installed (its uninstall "
                "deletes the whole operator namespace)"
            )
        if not self.created.deployment:
            ctx.log("this run created no deployment: nothing to delete")
        elif self.created.deleted:
            ctx.log("the Delete phase removed the deployment")
        else:
            ctx.log(f"deleting deployment {s.deployment_name} in {s.namespace}")
            try:
                await self._call(ctx, self.api.delete_deployment(s.deployment_name, s.namespace))
            except NotFound:
                ctx.log("the backend no longer knows the deployment")
            except ClientError as exc:
                # The backend is the normal way, but a broken backend must not leave the
                # cluster dirty: the Workspace is ours, delete it through Kubernetes.
                ctx.log(f"backend delete failed ({exc}); deleting the Workspace through Kubernetes")
                try:
                    await self.kube.delete(WORKSPACES, s.deployment_name, s.namespace)
                except NotFound:
                    pass
            await self._wait_gone(ctx, check_backend=False)
            self.created.deleted = True
        leftovers = await self.leftovers()
        if leftovers:
            raise PhaseFailed("left behind: " + "; ".join(leftovers))

    async def leftovers(self) -> list[str]:
        """What of this run's is still in the cluster: the leak check.

        Everything that carries the run's labels counts, not just the objects the flow knows
        by name: a Service or a pod that the KAITO controller forgot to delete is a leak too.
        """
        s = self.settings
        if not self.created.deployment:
            return []
        selector = f"kaito.sh/workspace={s.deployment_name}"
        # Independent questions, asked side by side: one round trip. The Workspaces are
        # those with our label, and ours by name whatever its labels say.
        labelled, named, pods, services = await _side_by_side(
            self.kube.list(
                WORKSPACES,
                s.namespace,
                label_selector=f"app.kubernetes.io/instance={s.deployment_name}",
            ),
            self.kube.get(WORKSPACES, s.deployment_name, s.namespace),
            self.kube.list(PODS, s.namespace, label_selector=selector),
            self.kube.list(SERVICES, s.namespace, label_selector=selector),
        )
        workspaces = labelled.result().get("items") or []
        try:
            workspaces.append(named.result())
        except NotFound:
            pass
        return [
            *(
                _leftover("Workspace", w)
                for w in {w["metadata"]["name"]: w for w in workspaces}.values()
            ),
            *(_leftover("Pod", o) for o in pods.result().get("items") or []),
            *(_leftover("Service", o) for o in services.result().get("items") or []),
        ]

    # -- helpers ----------------------------------------------------------------

    async def _wait_for(
        self, check: Any, *, watches: list[WatchSpec], recheck: float, **kwargs: Any
    ) -> Any:
        """``wait_for`` under the configured strategy: shared watches, or plain polling."""
        if self.settings.wait_strategy == "poll":
            return await wait_for(check, watches=[], recheck=self.settings.poll_interval, **kwargs)
        return await wait_for(check, watches=watches, recheck=recheck, hub=self.hub, **kwargs)

    async def _wait_gone(self, ctx: PhaseContext, *, check_backend: bool = True) -> None:
        s = self.settings

        selector = f"kaito.sh/workspace={s.deployment_name}"
        watched = [
            (
                WatchSpec(
                    WORKSPACES, s.namespace, field_selector=f"metadata.name={s.deployment_name}"
                ),
                "Workspace",
            ),
            (WatchSpec(PODS, s.namespace, label_selector=selector), "Pod"),
            (WatchSpec(SERVICES, s.namespace, label_selector=selector), "Service"),
        ]

        async def gone() -> bool | None:
            if self.hub is not None and s.wait_strategy == "watch":
                # The shared watches are the API server's own account of these objects, a
                # moment behind it: what they still show is not gone, and once all three
                # show nothing, the server has deleted it all. Cleanup's leak check then
                # lists once more, as the final word. Without a live view, list now.
                seen = [
                    self.hub.known(
                        w.resource,
                        w.namespace,
                        label_selector=w.label_selector,
                        field_selector=w.field_selector,
                    )
                    for w, _ in watched
                ]
                still = [
                    _leftover(kind, o)
                    for (_, kind), objs in zip(watched, seen, strict=True)
                    for o in objs or []
                ]
                if still:
                    ctx.progress("waiting for deletion; still there: " + "; ".join(still))
                    return None
                if all(objs is not None for objs in seen):
                    return True
            left = await self.leftovers()
            if left:
                ctx.progress("waiting for deletion; still there: " + "; ".join(left))
                return None
            return True

        await self._wait_for(
            gone,
            kube=self.kube,
            recheck=min(s.recheck, 5.0),
            on_note=ctx.log,
            watches=[w for w, _ in watched],
        )
        ctx.log("the Workspace, its pods and its services are gone")
        if not check_backend:
            return
        delay = 0.1
        while True:
            # The cluster status only matters for a 404, but asking both at once saves a
            # round trip where it counts: at the end of every flow.
            got, connected = await _side_by_side(
                self._call(ctx, self.api.get_deployment(s.deployment_name, s.namespace)),
                self._call(ctx, self.api.cluster_status()),
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

    async def _call(
        self, ctx: PhaseContext, call: Any, *, not_found_means_gone: bool = True
    ) -> Any:
        """Await a backend call, turning answers that end the phase into one-line reasons."""
        try:
            return await call
        except Unauthorized as exc:
            raise PhaseFailed(
                f"the backend refused the request ({exc.status} {exc.message}): "
                f"check the bearer token (KUBEFOUNDRY_TOKEN or token_file)"
            ) from None
        except ResponseFormatError as exc:
            raise PhaseFailed(str(exc)) from None
        except NotFound as exc:
            if not_found_means_gone:
                raise
            raise PhaseFailed(f"{exc.method} {exc.path} answered 404: {exc.message}") from None


def pod_problem(pod: dict[str, Any]) -> str | None:
    """Why this pod will never become ready, or None while it still may."""
    meta, spec, status = pod.get("metadata", {}), pod.get("spec", {}), pod.get("status", {}) or {}
    name = meta.get("name", "?")
    if meta.get("deletionTimestamp"):
        return None
    images = {c.get("name"): c.get("image") for c in spec.get("containers") or []}
    for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        waiting = (cs.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        if reason in FATAL_WAITING_REASONS:
            image = cs.get("image") or images.get(cs.get("name")) or "?"
            message = waiting.get("message") or ""
            last = (cs.get("lastState") or {}).get("terminated") or {}
            tail = f"; last exit code {last.get('exitCode')}" if last else ""
            return (
                f"pod {name} container {cs.get('name')}: {reason} (image {image})"
                f"{': ' + message if message else ''}{tail}"
            )
    if status.get("phase") == "Failed":
        why = status.get("reason") or status.get("message") or ""
        exits = [
            f"{cs.get('name')} exit code {((cs.get('state') or {}).get('terminated') or {}).get('exitCode')}"
            for cs in status.get("containerStatuses") or []
            if (cs.get("state") or {}).get("terminated")
        ]
        return f"pod {name} Failed{': ' + why if why else ''}{' (' + ', '.join(exits) + ')' if exits else ''}"
    return None


class _Outcome:
    """What an awaitable gave: its value, or the exception it raised (kept for later)."""

    def __init__(self) -> None:
        self._value: Any = None
        self._error: BaseException | None = None

    async def capture(self, awaitable: Any) -> None:
        try:
            self._value = await awaitable
        except Exception as exc:
            self._error = exc

    def result(self) -> Any:
        if self._error is not None:
            raise self._error
        return self._value


async def _side_by_side(*awaitables: Any) -> list[_Outcome]:
    """Await independent requests at once; each outcome raises its own error when read."""
    outcomes = [_Outcome() for _ in awaitables]
    async with anyio.create_task_group() as tg:
        for outcome, awaitable in zip(outcomes, awaitables, strict=True):
            tg.start_soon(outcome.capture, awaitable)
    return outcomes


def _leftover(kind: str, obj: dict[str, Any]) -> str:
    """One object that should be gone, with what holds a Workspace back."""
    meta = obj.get("metadata", {})
    line = f"{kind} {meta.get('namespace')}/{meta.get('name')}"
    if kind == "Workspace":
        line += (
            f" (finalizers {meta.get('finalizers') or []}, deleting since "
            f"{meta.get('deletionTimestamp') or 'never'})"
        )
    return line


def _pod_ready(pod: dict[str, Any]) -> bool:
    """Running, not being deleted, and its Ready condition (or every container) true."""
    meta, status = pod.get("metadata", {}), pod.get("status", {}) or {}
    if meta.get("deletionTimestamp") or status.get("phase") != "Running":
        return False
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True")
    statuses = status.get("containerStatuses") or []
    return bool(statuses) and all(cs.get("ready") for cs in statuses)


__all__ = ["InstallGate", "KaitoFlow", "KaitoSettings", "WORKSPACES", "pod_problem", "EVENTS"]
