"""Running many flows at once: one budget, shared watches, one JUnit report, one exit code.

:func:`run_flows` is what ``python -m orchestrator run`` does once its configuration
is read, offered to a library user: give it flows (or factories that build them from
the run's shared machinery) and it runs each under its own runner, side by side,
with

- one :class:`~orchestrator.clients.WatchHub` for all of them, hosted so that a
  broken stream fails the flows that wait on it and never cancels their cleanup;
- one :class:`OncePerRun` gate, so that a provider is installed once per run;
- one JUnit file (a testsuite per flow) and a ``run.json`` per flow, in a
  folder of its own when there are several;
- SIGINT/SIGTERM turned into an orderly stop (cleanup runs, reports are written), unless
  the process ignores them (a background job's Ctrl-C), and the caller's handlers given
  back when the run ends;
- the exit code a CI job should see: interrupted beats failed beats passed.

Two runs never write over each other's reports: a run holds a lock on its artifacts
directory for as long as it runs, and a second run pointed at the same directory
stops at once with :class:`ArtifactsInUse` instead of mixing its files with the first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import secrets
import signal
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeAlias, TypeGuard, cast

import anyio

from ..clients import InferenceClient, InferenceRoute, KubeClient, KubeFoundryClient, WatchHub
from ..engine import (
    EXIT_REPORTS,
    Budget,
    CleanupPolicy,
    Flow,
    JUnitReporter,
    Reporter,
    Runner,
    RunRecord,
    SharedServices,
    SignalHandlers,
    may_handle_signals,
)
from ._kubefoundry import FlowSettings, KubeFoundryFlow
from ._once import OncePerRun
from ._profile import ProviderProfile


class ArtifactsInUse(Exception):
    """Another run is writing into the same artifacts directory."""


@dataclass(frozen=True)
class Target:
    """A deployment the configuration asks for; unset fields take the profile's defaults."""

    name: str
    model: str | None = None
    namespace: str | None = None
    replicas: int = 1
    #: The provider this deployment is for: only that provider's flow makes it. None:
    #: every provider's flow does.
    provider: str | None = None


@dataclass
class FlowContext:
    """What a flow factory gets: the run's shared machinery and its configuration.

    The runner fills ``hub`` before calling factories; everything else comes from
    whoever starts the run (the command line fills it from ``config.toml``, the
    environment and flags). Clients made here are closed when the run ends.
    """

    kube: KubeClient | None = None
    #: The configured flow settings: backend URL, timeouts, wait strategy, prompt.
    settings: FlowSettings = field(
        default_factory=lambda: FlowSettings(api_url="http://localhost:3001")
    )
    #: The deployments asked for; none means one, from ``settings``.
    targets: Sequence[Target] = ()
    #: The flow's own table in ``config.toml`` (``[kaito]``, ``[myflow]``): its options.
    options: Mapping[str, Any] = field(default_factory=dict)
    token: str | None = field(default=None, repr=False)
    inference_route: InferenceRoute = field(default_factory=lambda: InferenceRoute("service-proxy"))
    run_id: str = field(default_factory=lambda: secrets.token_hex(3)[:5])
    #: ``(suite, model) -> baseline latency in ms`` from the run history, if any.
    baseline: Callable[[str, str], float | None] = lambda suite, model: None
    #: Called with ``(flow name prefix, message)`` when a backend call is retried.
    on_retry: Callable[[str, str], None] | None = None
    hub: WatchHub | None = None
    install_gate: OncePerRun = field(default_factory=OncePerRun)
    _clients: list[KubeFoundryClient | InferenceClient] = field(default_factory=list)

    def backend_client(self, prefix: str = "") -> KubeFoundryClient:
        """A KubeFoundry client of its own (its diagnostics show its own exchanges)."""
        api = KubeFoundryClient(
            self.settings.api_url, token=self.token, on_retry=self.retry_reporter(prefix)
        )
        self._clients.append(api)
        return api

    def retry_reporter(self, prefix: str = "") -> Callable[[str], None]:
        """``on_retry`` for one flow: its messages, under ``prefix``, to the run's."""
        report = self.on_retry

        def retried(message: str) -> None:
            if report is not None:
                report(prefix, message)

        return retried

    def inference_client(self) -> InferenceClient:
        client = InferenceClient(
            self.inference_route,
            kube=self.kube,
            backend_url=self.settings.api_url,
            token=self.token,
        )
        self._clients.append(client)
        return client

    def kubefoundry_flows(self, profile: ProviderProfile) -> list[KubeFoundryFlow]:
        """One :class:`KubeFoundryFlow` per target, for ``profile``: a provider's factory.

        With several targets each flow is named ``PROVIDER-NAME`` (its JUnit testsuite
        and its artifacts folder); with one, it is the provider's id.
        """
        if self.kube is None:
            raise ValueError("a KubeFoundry flow needs a Kubernetes client (FlowContext.kube)")
        s = self._with_own_options(self.settings)
        own = self._with_own_options(FlowSettings(api_url=s.api_url))
        if self.targets:
            targets = [t for t in self.targets if t.provider in (None, profile.provider)]
        else:
            targets = [Target(s.deployment_name, s.model, s.namespace, s.replicas)]
        multi = len(targets) > 1
        flows = []
        for t in targets:
            suite = f"{profile.provider}-{t.name}" if multi else profile.provider
            # The flow's own table says what its provider needs unlike the run's others.
            model = own.model or t.model or s.model or profile.default_model
            settings = dataclasses.replace(
                s,
                deployment_name=t.name,
                namespace=own.namespace or t.namespace or s.namespace,
                model=model,
                replicas=t.replicas,
                suite=suite,
                latency_baseline_ms=self.baseline(profile.provider, model),
            )
            prefix = f"{suite}: " if multi else ""
            flows.append(
                KubeFoundryFlow(
                    profile,
                    settings,
                    api=self.backend_client(prefix),
                    kube=self.kube,
                    inference=self.inference_client(),
                    hub=self.hub,
                    install_gate=self.install_gate,
                    on_retry=self.retry_reporter(prefix),
                )
            )
        return flows

    def _with_own_options(self, s: FlowSettings) -> FlowSettings:
        """``s`` with what the flow's table sets: ``namespace``, ``model``, ``replicas``,
        the prompt, the phase timeouts (seconds): what the flow's provider needs unlike
        the others of the run."""
        known = {f.name for f in dataclasses.fields(FlowSettings)} - {"api_url", "suite"}
        given = {k: v for k, v in self.options.items() if k in known}
        return dataclasses.replace(s, **given) if given else s

    def with_options(self, options: Mapping[str, Any]) -> FlowContext:
        """This run's context, with a flow's own options (its table in config.toml).

        The copy shares everything else: the clients, the hub, the install gate, and the
        list of clients to close at the end of the run.
        """
        return dataclasses.replace(self, options=options)

    async def aclose(self) -> None:
        """Close the clients made through this context (and its copies)."""
        clients, self._clients = self._clients, []
        for client in clients:
            await client.aclose()


#: A flow factory: builds a run's flows from its :class:`FlowContext`. Entry points in
#: the ``orchestrator.flows`` group name one.
FlowFactory: TypeAlias = Callable[[FlowContext], "Flow | Sequence[Flow]"]


class FlowRun:
    """One run of many flows; :func:`run_flows` is the short way to use it.

    Kept as an object so that a caller can read the ``records`` afterwards (the command
    line prints a table of them and appends them to the run history).
    """

    def __init__(
        self,
        flows: Sequence[Flow | FlowFactory],
        *,
        budget: float = 600.0,
        reserve: float | None = None,
        cleanup_cap: float | None = None,
        artifacts_dir: str | os.PathLike[str] = "test-results",
        reporters: Sequence[Reporter] | Callable[[Flow, bool], Sequence[Reporter]] = (),
        context: FlowContext | None = None,
        cleanup_policy: CleanupPolicy = "always",
        strict: bool = False,
        junit: JUnitReporter | None = None,
        handle_signals: bool | None = None,
        on_runner: Callable[[Runner], None] | None = None,
        timeout_settings: Mapping[str, str] | None = None,
        lock: bool = True,
    ) -> None:
        self.flows = list(flows)
        self.budget = budget
        self.reserve = min(60.0, budget / 4) if reserve is None else reserve
        self.cleanup_cap = cleanup_cap
        self.artifacts_dir = Path(artifacts_dir)
        self.reporters = reporters
        self.context = context or FlowContext()
        self.cleanup_policy: CleanupPolicy = cleanup_policy
        self.strict = strict
        self._own_junit = junit is None
        self.junit = junit or JUnitReporter(self.artifacts_dir / "junit.xml")
        #: Take SIGINT/SIGTERM for the run (True), leave them (False), or take them where
        #: Python lets a program, in the main thread of the main interpreter (None).
        self.handle_signals = handle_signals
        self.on_runner = on_runner
        self.lock = lock
        #: Phase name -> how to give it more time, quoted when it times out.
        self.timeout_settings = timeout_settings
        self.runners: list[Runner] = []
        self.records: list[RunRecord] = []
        #: What the shared machinery reported when it failed (a watch stream that broke).
        self.shared_failures: list[str] = []

    async def run(self) -> int:
        """Run every flow to its end; return the exit code (0, 1, 3, or 128 + signal)."""
        self.artifacts_dir.mkdir(parents=True, exist_ok=True)
        held = exclusive_artifacts(self.artifacts_dir) if self.lock else contextlib.nullcontext()
        with held, self._signals():
            try:
                await self._run()
            finally:
                await self.context.aclose()
        code = worst_exit(self.records)
        if self._own_junit:
            try:
                self.junit.flush()
            except OSError:
                return EXIT_REPORTS if code in (0, 1) else code
        if any(r.report_problems for r in self.runners):
            return EXIT_REPORTS if code in (0, 1) else code
        return code

    async def _run(self) -> None:
        ctx = self.context
        async with SharedServices() as shared:
            if ctx.kube is not None and ctx.hub is None:
                ctx.hub = await shared.start("the watch hub", WatchHub(ctx.kube))
            flows = self._build(ctx)
            multi = len(flows) > 1
            for flow, folder in zip(flows, _folders(flows), strict=True):
                reporters = (
                    self.reporters(flow, multi) if callable(self.reporters) else self.reporters
                )
                runner = Runner(
                    flow,
                    budget=Budget(self.budget, self.reserve, cleanup_cap=self.cleanup_cap),
                    reporters=[*reporters, self.junit],
                    artifacts_dir=self.artifacts_dir / folder if multi else self.artifacts_dir,
                    cleanup_policy=self.cleanup_policy,
                    strict=self.strict,
                    timeout_settings=self.timeout_settings,
                )
                self.runners.append(runner)
                if self.on_runner is not None:
                    self.on_runner(runner)

            def fail_all(reason: str) -> None:
                self.shared_failures.append(reason)
                for runner in self.runners:
                    runner.fail(reason)

            shared.on_failure(fail_all)
            async with anyio.create_task_group() as tg:
                for runner in self.runners:
                    tg.start_soon(runner.run)
        self.records = [r.record for r in self.runners]

    def _build(self, ctx: FlowContext) -> list[Flow]:
        flows: list[Flow] = []
        for item in self.flows:
            made = item if _is_flow(item) else cast(FlowFactory, item)(ctx)
            flows += [made] if _is_flow(made) else list(cast(Sequence[Flow], made))
        if not flows:
            raise ValueError("no flows to run")
        return flows

    def _signals(self) -> contextlib.AbstractContextManager[object]:
        """SIGINT/SIGTERM interrupt every runner: they clean up and report, then stop.

        A signal the process ignores (a background job's SIGINT) stays ignored, and the
        caller's own handlers are back once the run ends (:class:`SignalHandlers`).
        Unless told (``handle_signals``), a run takes them only where Python lets it: in
        the main thread of the main interpreter. A run in another thread leaves signals
        to the program, which stops it by cancelling it.
        """
        wanted = self.handle_signals
        if not (may_handle_signals() if wanted is None else wanted):
            return contextlib.nullcontext()

        def interrupt(sig: signal.Signals) -> None:
            for runner in self.runners:
                runner.interrupt(sig.name)

        return SignalHandlers(interrupt)


async def run_flows(
    flows: Sequence[Flow | FlowFactory],
    *,
    budget: float = 600.0,
    artifacts_dir: str | os.PathLike[str] = "test-results",
    reporters: Sequence[Reporter] | Callable[[Flow, bool], Sequence[Reporter]] = (),
    context: FlowContext | None = None,
    **options: Any,
) -> int:
    """Run ``flows`` side by side under one budget (seconds); return the exit code.

    ``flows`` holds flows, or factories called with the run's :class:`FlowContext`
    (its Kubernetes client, shared watch hub, install gate and configuration).
    ``reporters`` are added to every flow's runner (a JUnit reporter for
    ``artifacts_dir/junit.xml`` always is), or a function ``(flow, several) ->
    reporters`` for reporters that belong to one flow (a console view).
    ``options`` are :class:`FlowRun`'s: ``reserve``, ``cleanup_cap``,
    ``cleanup_policy``, ``strict``, ``handle_signals``.

    Signals: called in the main thread (of the main interpreter), the run takes SIGINT
    and SIGTERM while it goes on, to stop in order (cleanup, reports; exit 130/143),
    and gives the caller's handlers back when it ends; a signal the process ignores
    stays ignored. Called in any other thread, where Python lets no one take a signal,
    it leaves them alone: the program stops such a run by cancelling it.
    ``handle_signals=False`` leaves them alone everywhere, ``True`` takes them or fails.

    Exit codes: 0 every flow passed, 1 one failed, 3 a report could not be written,
    128 + N interrupted by signal N. Raises :class:`ArtifactsInUse` when another run
    holds ``artifacts_dir``.
    """
    return await FlowRun(
        flows,
        budget=budget,
        artifacts_dir=artifacts_dir,
        reporters=reporters,
        context=context,
        **options,
    ).run()


def worst_exit(records: Sequence[RunRecord]) -> int:
    """Interrupted beats failed beats passed: the exit code a CI job should see."""
    codes = [r.exit_code for r in records]
    return next((c for c in codes if c >= 128), max(codes, default=0))


def _is_flow(item: object) -> TypeGuard[Flow]:
    return callable(getattr(item, "phases", None)) and hasattr(item, "name")


def _folders(flows: Sequence[Flow]) -> list[str]:
    """A folder name per flow, unique even when two flows share a name."""
    seen: dict[str, int] = {}
    out = []
    for flow in flows:
        base = "".join(c if c.isalnum() or c in "-_." else "_" for c in flow.name) or "flow"
        seen[base] = seen.get(base, 0) + 1
        out.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
    return out


LOCK_FILE = ".orchestrator.lock"


@contextlib.contextmanager
def exclusive_artifacts(artifacts: Path) -> Iterator[None]:
    """Hold the artifacts directory for this run; refuse one that another run holds
    (:class:`ArtifactsInUse`). Reentrant it is not: hold it once per run.

    An advisory ``flock`` on a file in the directory: the kernel drops it when the
    process ends however it ends, so a crashed run never leaves the directory locked.
    """
    artifacts.mkdir(parents=True, exist_ok=True)
    path = artifacts / LOCK_FILE
    handle: IO[str] = open(path, "a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise ArtifactsInUse(
                f"{artifacts} is in use by another run ({holder}); its reports would be "
                "overwritten: wait for it, or choose another --artifacts-dir"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
    finally:
        handle.close()
