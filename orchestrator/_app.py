"""The ``run`` command: build the environment, the clients and the flows; run; report.

Kept apart from ``cli.py`` so that argument parsing and ``--help`` never pay
for importing the engine, the clients or the sandbox.

One run may hold several deployments (``--parallel``, ``[[deployments]]``):
each is its own flow with its own runner, phases, cleanup and JUnit
testsuite, all under one budget, sharing one HTTP client, one Kubernetes
client and one :class:`WatchHub` (one watch stream per resource type and
namespace, however many flows wait on it). One failing flow neither stops nor
dirties the others.

When the run manages its environment (``--create-cluster``, ``--backend-dir``)
the setup steps are an ``environment`` testsuite of their own, timed against
the same budget, and the teardown (stop the backend, delete the cluster) runs
after every flow has cleaned up, whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import secrets
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import yaml
from rich.console import Console

from ._loop import run as run_loop
from .clients import InferenceRoute, KubeClient
from .config import TOKEN_ENV, Settings
from .engine import (
    EXIT_REPORTS,
    RUN_JSON,
    Budget,
    ConsoleReporter,
    Flow,
    GitHubReporter,
    JUnitReporter,
    Phase,
    PhaseContext,
    PhaseRecord,
    Reporter,
    ReportProblem,
    Runner,
    RunRecord,
    RunsView,
    SignalHandlers,
    clear_reports,
    describe_os_error,
    discard,
    print_runs,
    redactor,
    signal_exit_code,
    stopped_record,
    wants_live,
    write_run_json,
)
from .flows import (
    ArtifactsInUse,
    FlowContext,
    FlowFactory,
    FlowNotFound,
    FlowRun,
    FlowSettings,
    exclusive_artifacts,
    find_flow,
)
from .flows import Target as FlowTarget
from .history import HISTORY_FILE, Entry, append, baseline, load

EXIT_USAGE = 2


@dataclasses.dataclass(frozen=True)
class EnvironmentOptions:
    """What ``--create-cluster`` and ``--backend-*`` asked for."""

    create_cluster: bool = False
    cluster_name: str = "kubefoundry-test"
    keep_cluster: bool = False
    reuse_cluster: bool = False
    backend_dir: str | None = None
    backend_command: str = "bun run dev"
    backend_port: int = 3001
    #: With --sandbox: keep the sandbox serving after the run until Ctrl-C.
    keep_sandbox: bool = False
    #: Loaded into the new cluster's nodes before the flow (a cached model image).
    load_images: tuple[str, ...] = ()

    @property
    def managed(self) -> bool:
        return self.create_cluster or self.backend_dir is not None


def flow_settings(settings: Settings, *, api_url: str) -> FlowSettings:
    """The configured flow settings: what every flow of the run shares."""
    return FlowSettings(
        api_url=api_url,
        namespace=settings.namespace,
        deployment_name=settings.deployment_name,
        model=settings.model,
        install_timeout=settings.seconds("install_timeout"),
        deploy_timeout=settings.seconds("deploy_timeout"),
        ready_timeout=settings.seconds("deployment_ready_timeout"),
        inference_timeout=settings.seconds("inference_timeout"),
        delete_timeout=settings.seconds("delete_timeout"),
        wait_strategy=settings.wait_strategy,
        poll_interval=settings.seconds("poll_interval"),
        recheck=settings.seconds("recheck_interval"),
        chaos=settings.chaos,
        latency_regression_pct=settings.latency_regression,
        expect_pattern=settings.inference_expect,
        expect_prompt=settings.inference_expect_prompt,
    )


def inference_route(settings: Settings) -> InferenceRoute:
    if settings.inference in ("service-proxy", "backend-proxy"):
        return InferenceRoute(settings.inference)  # type: ignore[arg-type]
    return InferenceRoute("url", base_url=settings.inference)


@contextlib.asynccontextmanager
async def _sandbox(
    settings: Settings,
    sandbox: bool,
    faults: dict[str, Any],
    console: Console,
    artifacts: Path,
    keep_until: asyncio.Event | None = None,
) -> AsyncIterator[tuple[str, str | None]]:
    """Yield ``(api_url, kubeconfig)``: the configured ones, or a sandbox's.

    The sandbox's own log goes to ``ARTIFACTS/sandbox.log``, not the console: what it
    says matters only when something went wrong, and then the console says where to
    look. With ``keep_until`` the sandbox keeps serving after the run until that event
    is set (Ctrl-C), so the commands printed for a failed run still work.
    """
    if not sandbox:
        yield settings.api_url, settings.kubeconfig
        return
    from .sandbox import Faults, Sandbox, SandboxOptions

    with (
        tempfile.TemporaryDirectory(prefix="orchestrator-sandbox-") as workdir,
        _SandboxLog(artifacts / "sandbox.log") as sandbox_log,
    ):
        options = SandboxOptions(
            workdir=Path(workdir),
            faults=Faults.model_validate(faults),
            auth_token=settings.token.get_secret_value() if settings.token else None,
        )
        async with Sandbox(options) as sb:
            lasts = "until Ctrl-C after the run" if keep_until else "until the run ends"
            console.print(
                f"sandbox: API_URL={sb.api_url} KUBECONFIG={sb.kubeconfig} ({lasts})",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
            yield sb.api_url, str(sb.kubeconfig)
            if keep_until is not None:
                console.print(
                    "sandbox kept for inspection; in another shell:\n"
                    f"  export API_URL={sb.api_url} KUBECONFIG={sb.kubeconfig}\n"
                    "Ctrl-C stops it (and everything it runs).",
                    markup=False,
                    highlight=False,
                    soft_wrap=True,
                )
                await keep_until.wait()
        if sandbox_log.problems:
            console.print(
                f"sandbox: {sandbox_log.problems} warning(s) or error(s), see {sandbox_log.path}",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )


class _MaskingFormatter(logging.Formatter):
    """Each record, traceback included, masked before its handler writes it: a record is
    written whole, so nothing of it reaches the file unmasked."""

    def format(self, record: logging.LogRecord) -> str:
        return redactor.redact(super().format(record))


class _SandboxLog(logging.Handler):
    """Sends the sandbox's log (and its HTTP servers') to a file while a run uses it,
    counting the warnings and errors, so the console stays the run's."""

    LOGGERS = ("orchestrator.sandbox", "aiohttp")

    def __init__(self, path: Path) -> None:
        super().__init__(logging.WARNING)
        self.path = path
        self.problems = 0
        self._file: logging.Handler | None = None
        self._saved: list[tuple[logging.Logger, bool, int]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.problems += 1

    def __enter__(self) -> _SandboxLog:
        try:
            self._file = logging.FileHandler(self.path, mode="w", encoding="utf-8", delay=True)
        except OSError:
            self._file = None
        if self._file is not None:
            self._file.setFormatter(
                _MaskingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
            )
        for name in self.LOGGERS:
            logger = logging.getLogger(name)
            self._saved.append((logger, logger.propagate, logger.level))
            logger.propagate = False
            logger.setLevel(logging.INFO)
            logger.addHandler(self)
            if self._file is not None:
                logger.addHandler(self._file)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for logger, propagate, level in self._saved:
            logger.removeHandler(self)
            if self._file is not None:
                logger.removeHandler(self._file)
            logger.propagate = propagate
            logger.setLevel(level)
        if self._file is not None:
            self._file.close()


class _EnvironmentFlow:
    """The environment's setup steps as a flow of their own (its own testsuite).

    Its cleanup does nothing: tearing the environment down must wait until every
    deployment flow has cleaned up, so the app does it last and records it here.
    """

    name = "environment"

    def __init__(self, phases: list[Phase], properties: dict[str, str]) -> None:
        self._phases = phases
        self._properties = properties

    def phases(self) -> list[Phase]:
        return self._phases

    def properties(self) -> dict[str, str]:
        return self._properties

    async def diagnose(self, ctx: PhaseContext, failed: PhaseRecord) -> None:
        ctx.log(f"{failed.title} failed; see the logs next to the report")

    async def cleanup(self, ctx: PhaseContext) -> None:
        ctx.log("teardown runs after the deployment flows")

    def keep_hints(self) -> list[str]:
        return []


class _Stopped(Exception):
    """A signal came while the run was setting up, before its flows existed."""

    def __init__(self, signame: str, where: str) -> None:
        super().__init__(f"interrupted by {signame} {where}")
        self.signame = signame
        self.where = where


class _Runners(list[Runner]):
    """The run's runners, and the signal, from the first instruction of the run on.

    A signal that comes before a runner exists is not lost: a runner added later is
    interrupted at once (it skips its phases, cleans up and reports), and a setup step
    in progress (starting the sandbox, loading the kubeconfig, a credential plugin) is
    cancelled and reported as interrupted.
    """

    def __init__(self) -> None:
        super().__init__()
        self.signame: str | None = None
        self._setup: list[anyio.CancelScope] = []

    def append(self, runner: Runner) -> None:
        super().append(runner)
        if self.signame is not None:
            runner.interrupt(self.signame)

    def interrupt(self, signame: str) -> None:
        if self.signame is None:
            self.signame = signame
        for runner in self:
            runner.interrupt(signame)
        for scope in self._setup:
            scope.cancel()

    @contextlib.contextmanager
    def setup(self, where: str) -> Iterator[None]:
        """Run a setup step that a signal cancels; raise :class:`_Stopped` if one did."""
        with anyio.CancelScope() as scope:
            self._setup.append(scope)
            try:
                if self.signame is not None:
                    scope.cancel()
                yield
            finally:
                self._setup.remove(scope)
        if self.signame is not None:
            raise _Stopped(self.signame, where)


def _worst_exit(records: Sequence[RunRecord]) -> int:
    """Interrupted beats failed beats passed: the exit code a CI job should see."""
    codes = [r.exit_code for r in records]
    return next((c for c in codes if c >= 128), max(codes, default=0))


async def _run(
    settings: Settings,
    sandbox: bool,
    faults: dict[str, Any],
    live: bool,
    env_opts: EnvironmentOptions,
) -> int:
    """Hold the artifacts directory for the whole run, then run.

    Held before the previous reports are cleared: a second run pointed at the same
    directory stops here, and neither deletes nor overwrites the first one's files.
    """
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(exclusive_artifacts(Path(settings.artifacts_dir)))
        except ArtifactsInUse as exc:
            print(f"orchestrator: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except OSError:
            pass  # an unusable directory: _prepare_reports says what is wrong with it
        return await _run_held(settings, sandbox, faults, live, env_opts)


async def _run_held(
    settings: Settings,
    sandbox: bool,
    faults: dict[str, Any],
    live: bool,
    env_opts: EnvironmentOptions,
) -> int:
    console = Console()
    artifacts = Path(settings.artifacts_dir)
    unusable = _prepare_reports(artifacts)
    if unusable:
        return _reports_failed(unusable, EXIT_REPORTS)
    junit_path = artifacts / "junit.xml"
    junit = JUnitReporter(junit_path)
    extra: list[Reporter] = [GitHubReporter()] if os.environ.get("GITHUB_ACTIONS") == "true" else []
    started = time.monotonic()
    total = settings.seconds("test_timeout")
    reserve = settings.seconds("cleanup_reserve")
    cleanup_cap = max(reserve, settings.seconds("delete_timeout"))
    runners = _Runners()

    keep = sandbox and env_opts.keep_sandbox
    keep_sandbox = asyncio.Event()
    if sandbox and not keep and settings.cleanup == "auto":
        # The sandbox goes away with the run: keeping a failed run's resources for
        # inspection would keep nothing, and its cleanup is part of what is tested.
        settings = settings.model_copy(update={"cleanup": "always"})

    def interrupt(signame: str) -> None:
        keep_sandbox.set()
        runners.interrupt(signame)

    # A signal the process ignores stays ignored (a background job's Ctrl-C is not ours);
    # whoever called us gets its own handlers back at the end.
    signals = SignalHandlers(lambda sig: interrupt(sig.name))
    signals.install()
    try:
        async with contextlib.AsyncExitStack() as stack:
            with runners.setup("while the sandbox started"):
                api_url, kubeconfig = await stack.enter_async_context(
                    _sandbox(
                        settings,
                        sandbox,
                        faults,
                        console,
                        artifacts,
                        keep_sandbox if keep else None,
                    )
                )
            records: list[RunRecord] = []
            cluster = backend = None
            env_record: RunRecord | None = None
            if not settings.targets("shard"):
                # More CI jobs than deployments: this job's shard is empty. It passes,
                # with an empty report, and makes no cluster and starts no backend.
                console.print(
                    f"shard {settings.shard}: no deployment of this run falls in it; "
                    "nothing to run",
                    markup=False,
                    highlight=False,
                    soft_wrap=True,
                )
            elif env_opts.managed:
                from .environment import BackendProcess, KindCluster, setup_phases

                env_dir = artifacts / "environment"
                env_dir.mkdir(parents=True, exist_ok=True)

                def say(line: str) -> None:
                    console.print(
                        f"environment: {line}", markup=False, highlight=False, soft_wrap=True
                    )

                if env_opts.create_cluster:
                    # The kubeconfig holds the cluster's client key: it goes to a private
                    # folder that leaves with the run, not into the artifacts CI uploads.
                    private = stack.enter_context(
                        tempfile.TemporaryDirectory(prefix="orchestrator-kind-")
                    )
                    cluster = KindCluster(
                        env_opts.cluster_name,
                        keep=env_opts.keep_cluster,
                        reuse=env_opts.reuse_cluster,
                        workdir=env_dir,
                        kubeconfig_dir=Path(private),
                        log=say,
                    )
                    kubeconfig = str(cluster.kubeconfig)
                if env_opts.backend_dir:
                    backend = BackendProcess(
                        Path(env_opts.backend_dir),
                        shlex.split(env_opts.backend_command),
                        port=env_opts.backend_port,
                        kubeconfig=Path(kubeconfig) if kubeconfig else None,
                        log_path=env_dir / "backend.log",
                        log=say,
                    )
                    api_url = backend.url
                env_flow = _EnvironmentFlow(
                    setup_phases(cluster, backend, load_images=list(env_opts.load_images)),
                    {
                        "cluster": env_opts.cluster_name if cluster else "configured",
                        "backend": env_opts.backend_command if backend else "configured",
                    },
                )
                env_runner = Runner(
                    env_flow,
                    budget=Budget(total, reserve, cleanup_cap=cleanup_cap),
                    reporters=[ConsoleReporter(console, live=False, prefix=True), junit, *extra],
                    artifacts_dir=env_dir,
                    cleanup_policy="always",
                )
                runners.append(env_runner)
                try:
                    env_record = await env_runner.run()
                    records.append(env_record)
                    if env_record.outcome == "passed":
                        records += await _run_flows(
                            settings,
                            api_url,
                            kubeconfig,
                            artifacts,
                            console,
                            live,
                            junit,
                            extra,
                            runners,
                            total - (time.monotonic() - started),
                            reserve,
                            cleanup_cap,
                        )
                finally:
                    if env_record is not None:
                        await _teardown(cluster, backend, env_record, junit, console)
            else:
                records += await _run_flows(
                    settings,
                    api_url,
                    kubeconfig,
                    artifacts,
                    console,
                    live,
                    junit,
                    extra,
                    runners,
                    total,
                    reserve,
                    cleanup_cap,
                )
            if sandbox and not keep and any(_kept(r) for r in records):
                console.print(
                    "note: the sandbox shuts down with this run, so the commands above will "
                    "not find it; rerun with --keep-sandbox to inspect what a failed run left",
                    markup=False,
                    highlight=False,
                    soft_wrap=True,
                )
            code = _worst_exit(records)
            if runners.signame is not None and code < 128:
                # The signal came after the flows had ended (during teardown): the run
                # still did not end as asked, and a CI job must not read it as passed.
                code = signal_exit_code(runners.signame)
                console.print(
                    f"{runners.signame} received after the flows ended; exit code {code}",
                    markup=False,
                    highlight=False,
                    soft_wrap=True,
                )
            return _check_reports(code, junit, runners, console)
    except _Stopped as exc:
        # Whatever existed was cleaned up on the way here (the sandbox, the environment).
        code = signal_exit_code(exc.signame)
        record = stopped_record(
            "orchestrator", exc.signame, f"{exc}: the flows did not start; nothing was created"
        )
        for reporter in (junit, *extra):
            reporter.run_started(record)
            reporter.run_finished(record)
        console.print(
            f"INTERRUPTED: {exc}; nothing to clean up (exit code {code})",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        try:
            write_run_json(record, artifacts / RUN_JSON)
        except OSError as err:
            discard(artifacts / RUN_JSON)
            return _reports_failed(
                [ReportProblem(artifacts / RUN_JSON, describe_os_error(err))], code
            )
        return _check_reports(code, junit, runners, console, [artifacts / RUN_JSON])
    except _ConfigProblem as exc:
        from .cli import report_config_error

        report_config_error([str(exc)], settings.artifacts_dir)
        return EXIT_USAGE
    finally:
        signals.restore()


def _kept(record: RunRecord) -> bool:
    """Whether the console told how to inspect or delete what this run left behind."""
    cleanup = record.cleanup
    return bool(cleanup.detail) and cleanup.status in ("skipped", "failed", "interrupted")


def _prepare_reports(artifacts: Path) -> list[ReportProblem]:
    """Make the artifacts dir and remove the previous run's reports.

    From here until this run writes its own, there is no verdict on disk rather than an
    old one: a CI step that reads junit.xml after a crash must not find "passed".
    """
    try:
        artifacts.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return [ReportProblem(artifacts, describe_os_error(exc))]
    # The evidence of an earlier failure would read as this run's.
    shutil.rmtree(artifacts / "diagnostics", ignore_errors=True)
    discard(artifacts / "sandbox.log")
    return clear_reports(artifacts)


def _reports_failed(problems: Sequence[ReportProblem], code: int) -> int:
    """Say on stderr which reports are missing and why; the exit code says it too."""
    print("orchestrator: reports not written:", file=sys.stderr)
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)
    print(
        "  a CI step cannot see this run's verdict: make the directory writable or choose "
        "another with --artifacts-dir (env ORCHESTRATOR_ARTIFACTS_DIR)",
        file=sys.stderr,
    )
    # A signal's code or a usage error stays; a passed or failed run becomes "no report".
    return EXIT_REPORTS if code in (0, 1) else code


def _check_reports(
    code: int,
    junit: JUnitReporter,
    runners: Sequence[Runner],
    console: Console,
    written: Sequence[Path] = (),
) -> int:
    """Write junit.xml a last time, check every run.json, and name only files that exist."""
    problems: list[ReportProblem] = []
    try:
        junit.flush()
    except OSError as exc:
        discard(junit.path)
        problems.append(ReportProblem(junit.path, describe_os_error(exc)))
    for runner in runners:
        problems += runner.report_problems
    if problems:
        return _reports_failed(problems, code)
    run_jsons = [*written, *(runner.artifacts_dir / RUN_JSON for runner in runners)]
    named = [str(p) for p in run_jsons[:2]]
    if len(run_jsons) > 2:
        named = [f"{junit.path.parent}/*/{RUN_JSON} ({len(run_jsons)} runs)"]
    console.print(
        f"Reports: {junit.path}, {', '.join(named)}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    # Where a person looks first when a step failed: the pods, their logs and events.
    evidence = [r.artifacts_dir / "diagnostics" for r in runners]
    found = [str(d) for d in evidence if d.is_dir() and any(d.iterdir())]
    if found:
        console.print(
            f"Diagnostics (pods, logs, events): {', '.join(found)}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    return code


#: What to do when no cluster is configured: said wherever that is the problem.
NO_CLUSTER_NEXT = (
    "point KUBECONFIG (or --kubeconfig) at your cluster's kubeconfig, or run with --sandbox "
    "(no cluster needed) or --create-cluster (an ephemeral kind cluster)"
)


async def _load_kubeconfig(kubeconfig: str | None, exec_timeout: float) -> KubeClient:
    """The Kubernetes client, or a configuration problem that says what to do.

    A missing file is checked first: the loader would log "Config not found" and then
    complain about a missing current-context, which sends a person looking inside a
    file that does not exist.
    """
    if kubeconfig:
        files = [Path(p).expanduser() for p in kubeconfig.split(os.pathsep) if p]
        where = f"{kubeconfig} (KUBECONFIG or --kubeconfig)"
    else:
        files = [Path("~/.kube/config").expanduser()]
        where = f"{files[0]} (the default; KUBECONFIG is not set)"
    if not any(f.is_file() for f in files):
        raise _ConfigProblem(f"no kubeconfig: {where} does not exist; {NO_CLUSTER_NEXT}")
    try:
        return await KubeClient.from_kubeconfig(kubeconfig, exec_timeout=exec_timeout)
    except Exception as exc:  # the loader raises many kinds; all mean "bad kubeconfig"
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise _ConfigProblem(
            f"kubeconfig {where}: cannot be loaded: {type(exc).__name__}: {first}; fix the "
            f"file (`kubectl config view` shows what it holds) or {NO_CLUSTER_NEXT}"
        ) from None


async def _check_backend(api_url: str, window: float) -> None:
    """Fail at once, saying what to do, when nothing has listened at ``api_url`` for
    ``window`` seconds (``backend_wait``: longer than a backend restart).

    The flow's calls retry connection errors until their phase's deadline (a restarting
    backend is worth waiting for), which for a backend that is simply not there means
    minutes of retry lines. Only a TCP connection is tried, no request: whatever the
    backend would answer is the flow's to report (and a test's injected faults are the
    flow's to meet), and the backend client does not go through a proxy either.
    """
    from urllib.parse import urlsplit

    parts = urlsplit(api_url)
    host = parts.hostname or "localhost"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    deadline = time.monotonic() + window
    delay = 0.2
    while True:
        try:
            with anyio.fail_after(min(5.0, window)):
                stream = await anyio.connect_tcp(host, port)
            await stream.aclose()
            return
        except (OSError, TimeoutError) as exc:
            why = _connect_problem(exc)
            if time.monotonic() + delay > deadline:
                raise _ConfigProblem(
                    f"no KubeFoundry backend answers at {api_url} (API_URL or --api-url): "
                    f"{why} (for {window:g} s); start it (cd kube-foundry/backend && "
                    "PORT=3001 bun run dev) or set API_URL to where it runs, or run with "
                    "--sandbox (a built-in stand-in) or --create-cluster --backend-dir PATH "
                    "(a kind cluster and the backend, started for the run)"
                ) from None
        await anyio.sleep(delay)
        delay = min(2.0, delay * 2)


def _connect_problem(exc: BaseException) -> str:
    """ "connection refused", "Name or service not known": the words of the cause."""
    if isinstance(exc, TimeoutError):
        return "connecting timed out"
    # anyio says "All connection attempts failed" and keeps the reason as the cause.
    causes = [exc, *([exc.__cause__] if exc.__cause__ else []), *getattr(exc, "exceptions", ())]
    for cause in causes:
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror
    return str(exc) or type(exc).__name__


def _timeout_setting(name: str) -> str:
    """How a user sets the timeout ``name``: "DEPLOY_TIMEOUT or --deploy-timeout (ms)"."""
    from ._keys import KEYS

    key = next(k for k in KEYS if k.name == name)
    return " or ".join(filter(None, [key.env, key.flag])) + " (ms)"


#: The flows' phases and the settings that give each more time (named in timeouts).
PHASE_TIMEOUT_SETTINGS = {
    "install": _timeout_setting("install_timeout"),
    "deploy": _timeout_setting("deploy_timeout"),
    "wait_ready": _timeout_setting("deployment_ready_timeout"),
    "chaos": _timeout_setting("deployment_ready_timeout"),
    "inference": _timeout_setting("inference_timeout"),
    "delete": _timeout_setting("delete_timeout"),
}


def _with_options(factory: FlowFactory, options: dict[str, Any]) -> FlowFactory:
    """The factory, called with the flow's own table of config.toml as its options."""

    def made(ctx: FlowContext) -> Any:
        return factory(ctx.with_options(options))

    made.__doc__ = factory.__doc__
    return made


def _register(value: str | None, name: str, warn: Callable[[str], None]) -> None:
    """Mask ``value`` from now on; say so, once, when it is too short to be masked
    everywhere (:meth:`Redactor.register`: the warning names where the value came from,
    never the value)."""
    redactor.register(value, name, warn)


def kubeconfig_credentials(paths: str) -> list[str]:
    """The credentials a kubeconfig holds as values (tokens, passwords, an auth
    provider's tokens and secret), read without running anything, so that they are
    masked before the environment starts (a backend we start may log them). A file that
    does not parse gives nothing: loading it later says what is wrong with it."""
    found: list[str] = []
    for part in paths.split(os.pathsep):
        if not part:
            continue
        try:
            data = yaml.safe_load(Path(part).expanduser().read_text(encoding="utf-8"))
        except (OSError, ValueError, yaml.YAMLError):
            continue
        users = data.get("users") if isinstance(data, dict) else None
        for entry in users if isinstance(users, list) else []:
            user = entry.get("user") if isinstance(entry, dict) else None
            if not isinstance(user, dict):
                continue
            provider = user.get("auth-provider")
            config = provider.get("config") if isinstance(provider, dict) else None
            values = [user.get("token"), user.get("password")]
            if isinstance(config, dict):
                values += [config.get(k) for k in ("id-token", "refresh-token", "client-secret")]
            found += [v for v in values if isinstance(v, str) and v.strip()]
    return found


class _ConfigProblem(Exception):
    """The configuration points at something unusable (a kubeconfig that does not load)."""


async def _run_flows(
    settings: Settings,
    api_url: str,
    kubeconfig: str | None,
    artifacts: Path,
    console: Console,
    live: bool,
    junit: JUnitReporter,
    extra: list[Reporter],
    runners: _Runners,
    total: float,
    reserve: float,
    cleanup_cap: float,
) -> list[RunRecord]:
    with runners.setup("while the kubeconfig loaded"):  # a credential plugin included
        kube = await _load_kubeconfig(kubeconfig, settings.seconds("credential_timeout"))
    for secret in kube.secrets:  # a credential plugin's token is known only now
        _register(secret, "the kubeconfig's credential", console.print)
    try:
        with runners.setup("while waiting for the backend"):
            await _check_backend(api_url, settings.seconds("backend_wait"))
    except BaseException:
        await kube.aclose()
        raise
    token = settings.token.get_secret_value() if settings.token else None
    history_path = artifacts / HISTORY_FILE
    try:
        past = load(history_path)
    except Exception as exc:  # a broken history must not stop the run
        console.print(f"history: ignored ({exc})", markup=False, soft_wrap=True)
        past = []
    run_id = secrets.token_hex(3)[:5]
    targets = settings.targets(run_id)

    def retried(prefix: str, message: str) -> None:
        console.print(f"{prefix}retrying: {message}", markup=False, highlight=False, soft_wrap=True)

    # Each flow gets its own backend and inference clients (FlowContext makes them): its
    # diagnostics then show its own exchanges only, and each connection pool stays small
    # (httpx scans the whole pool at every request; one pool for fifty flows costs most
    # of their CPU).
    context = FlowContext(
        kube=kube,
        settings=flow_settings(settings, api_url=api_url),
        targets=[FlowTarget(t.name, t.model, t.namespace, t.replicas, t.provider) for t in targets],
        token=token,
        inference_route=inference_route(settings),
        run_id=run_id,
        baseline=lambda suite, model: baseline(past, suite=suite, model=model),
        on_retry=retried,
    )
    try:
        factories = [
            _with_options(find_flow(name).load(), settings.flow_options.get(name, {}))
            for name in settings.flow_names()
        ]
    except FlowNotFound as exc:
        await kube.aclose()
        raise _ConfigProblem(str(exc)) from None
    # Many flows in a terminal share one live view (a row per flow); in a log, each
    # flow's lines carry its name.
    boards: list[RunsView] = []

    def reporters(flow: Flow, several: bool) -> Sequence[Reporter]:
        if several and live and wants_live(console):
            if not boards:
                boards.append(RunsView(console, budget=total))
            return [boards[0], *extra]
        return [ConsoleReporter(console, live=None if live else False, prefix=several), *extra]

    run = FlowRun(
        factories,
        budget=total,
        reserve=reserve,
        cleanup_cap=cleanup_cap,
        artifacts_dir=artifacts,
        reporters=reporters,
        context=context,
        cleanup_policy=settings.cleanup_policy(),
        strict=settings.strict,
        junit=junit,
        handle_signals=False,
        on_runner=runners.append,
        timeout_settings=PHASE_TIMEOUT_SETTINGS,
        lock=False,  # _run holds the artifacts directory from its first instruction
    )
    try:
        await run.run()
    finally:
        for board in boards:
            board.close()
        await kube.aclose()
    records = run.records
    if len(records) > 1:
        print_runs(console, records)
        console.print(
            f"watch connections opened: {kube.watches_opened} for {len(records)} deployments "
            f"(shared per resource type and namespace)",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    entries = []
    for record in records:
        entry = Entry.from_record(record.to_dict())
        entries.append(
            dataclasses.replace(entry, suite=record.properties.get("provider", entry.suite))
        )
    try:
        append(history_path, entries)
    except OSError as exc:
        console.print(f"history: not written ({exc})", markup=False, soft_wrap=True)
    return records


async def _teardown(
    cluster: Any, backend: Any, env_record: RunRecord, junit: JUnitReporter, console: Console
) -> None:
    """Stop the backend and delete the cluster, and record it as the environment's cleanup."""
    from .engine._record import utcnow
    from .environment import teardown

    rec = env_record.cleanup
    rec.started_at = utcnow()
    steps = await teardown(cluster, backend)
    rec.ended_at = utcnow()
    rec.duration = sum(s.duration for s in steps)
    errors = [f"{s.title}: {s.error}" for s in steps if s.error]
    rec.status = "failed" if errors else "passed"
    rec.reason = "; ".join(errors) or None
    rec.detail = "\n".join(
        f"{s.title}: {'failed: ' + s.error if s.error else ('done' if s.acted else 'nothing to do')}"
        f" ({s.duration:.1f} s)"
        for s in steps
    )
    for line in (rec.detail or "").splitlines():
        console.print(f"environment: {line}", markup=False, highlight=False, soft_wrap=True)
    if errors:
        env_record.outcome = "failed" if env_record.outcome == "passed" else env_record.outcome
    junit.run_finished(env_record)


def run_app(
    settings: Settings,
    *,
    sandbox: bool,
    faults: dict[str, Any],
    live: bool,
    environment: EnvironmentOptions | None = None,
) -> int:
    # Secrets are registered before anything can print them, and the process's own
    # streams pass the redactor too: a traceback or a stray print is a sink as well.
    stdout, stderr = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = redactor.stream(stdout), redactor.stream(stderr)

    def warn(text: str) -> None:
        print(f"orchestrator: {text}", file=sys.stderr)

    _register(os.environ.get(TOKEN_ENV), f"the KubeFoundry token ({TOKEN_ENV})", warn)
    if settings.token is not None:
        _register(settings.token.get_secret_value(), "the KubeFoundry token", warn)
    # The Hugging Face token the KubeRay and Dynamo flows put into a Secret.
    _register(os.environ.get("HF_TOKEN"), "HF_TOKEN", warn)
    kubeconfig = settings.kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
    for value in kubeconfig_credentials(kubeconfig):
        _register(value, "a credential in the kubeconfig", warn)
    try:
        # The loop ORCHESTRATOR_EVENT_LOOP chooses (_loop.py), as the benchmark's waiter does.
        return run_loop(_run(settings, sandbox, faults, live, environment or EnvironmentOptions()))
    finally:
        # Each wrapper may hold the end of what was written (it may start a secret):
        # releasing writes it out, masked, before the process's own streams come back.
        # A stream the reader closed (``| head``) has nothing left to write to; the
        # run's outcome and the process's own streams must not depend on it.
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                getattr(stream, "release", stream.flush)()
        sys.stdout, sys.stderr = stdout, stderr
