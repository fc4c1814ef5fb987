"""``python -m orchestrator``: wire configuration, clients, a flow and the engine.

Exit codes: 0 passed, 1 the flow failed (a failed cleanup included), 2 usage or
configuration error, 3 a report could not be written, 130 interrupted by Ctrl-C, 143 by
SIGTERM. Bad input gets
one clear message per problem and never a traceback.

Heavy imports (the Kubernetes client, the sandbox) happen inside the commands
that need them, so that ``--help`` and ``--version`` answer at once.
"""

from __future__ import annotations

import argparse
import gc
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._keys import BOOLEAN_KEYS, KEYS, TOKEN_ENV, ConfigError
from ._signals import ignored
from ._version import __version__

if TYPE_CHECKING:
    from .config import Settings

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is our exit code 2 with one line, not a stack of text."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group(
        "configuration (flags > environment > config.toml > defaults)",
        f"the bearer token comes from {TOKEN_ENV} or --token-file, never from a flag",
    )
    group.add_argument(
        "--config",
        metavar="FILE",
        help="configuration file (default: ./config.toml when present; env ORCHESTRATOR_CONFIG)",
    )
    for key in KEYS:
        if not key.flag:
            continue
        env = f" [env {key.env}]" if key.env else ""
        if key.name == "deployments":
            group.add_argument(
                key.flag, dest=key.name, metavar="SPEC", action="append", help=f"{key.help}{env}"
            )
        elif key.name in BOOLEAN_KEYS:
            group.add_argument(
                key.flag,
                dest=key.name,
                metavar="BOOL",
                nargs="?",
                const="true",
                help=f"{key.help}{env}",
            )
        else:
            group.add_argument(key.flag, dest=key.name, metavar="VALUE", help=f"{key.help}{env}")
    # The flag's name before the Install phase became provider-neutral: still accepted.
    group.add_argument("--kaito-install-timeout", dest="install_timeout", help=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="orchestrator",
        description=(
            "Prove, end to end, that a KubeFoundry installation can deploy and serve a model: "
            "Install KAITO -> Deploy -> Wait Ready -> Inference -> Delete."
        ),
    )
    parser.add_argument("--version", action="version", version=f"orchestrator {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run the flow (the default command)",
        description="Run the KAITO flow against a KubeFoundry backend.",
        formatter_class=_FaultHelp,
    )
    run.add_argument(
        "--sandbox",
        action="store_true",
        help="run against the built-in sandbox (KubeFoundry, KAITO, Kubernetes and a real "
        "model server on loopback) instead of a real backend",
    )
    run.add_argument(
        "--sandbox-fault",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="with --sandbox: inject a fault, e.g. image_pull_error=true (repeatable)",
    )
    run.add_argument(
        "--keep-sandbox",
        action="store_true",
        help="with --sandbox: keep the sandbox serving after the run, until Ctrl-C, and keep "
        "a failed run's resources in it, so that the printed kubectl/curl commands work",
    )
    run.add_argument("--no-live", action="store_true", help="plain line-by-line output")
    env = run.add_argument_group("environment (needs kind and Docker, or the backend's toolchain)")
    env.add_argument(
        "--create-cluster",
        action="store_true",
        help="create an ephemeral kind cluster for this run and delete it at the end",
    )
    env.add_argument("--cluster-name", default="kubefoundry-test", help="kind cluster name")
    env.add_argument(
        "--keep-cluster", action="store_true", help="do not delete the cluster at the end"
    )
    env.add_argument(
        "--reuse-cluster",
        action="store_true",
        help="use an existing kind cluster of that name instead of failing",
    )
    env.add_argument(
        "--backend-dir",
        metavar="PATH",
        help="start the KubeFoundry backend from this directory (e.g. kube-foundry/backend)",
    )
    env.add_argument(
        "--backend-command",
        default="bun run dev",
        help="command that starts the backend (default: bun run dev)",
    )
    env.add_argument("--backend-port", type=int, default=3001, help="backend port (default 3001)")
    env.add_argument(
        "--load-image",
        action="append",
        default=[],
        metavar="IMAGE",
        help="with --create-cluster: kind load docker-image IMAGE (from the local Docker) "
        "before the flow, so the node does not pull it (repeatable; CI caches the model image)",
    )
    _add_config_flags(run)

    sb = sub.add_parser(
        "sandbox",
        formatter_class=_FaultHelp,
        help="serve the sandbox until Ctrl-C",
        description="Serve the sandbox on loopback and print API_URL and KUBECONFIG.",
    )
    sb.add_argument(
        "--port", type=_port, default=3001, help="KubeFoundry API port (default 3001; 0 = any)"
    )
    sb.add_argument("--workdir", default=None, help="where the sandbox writes its kubeconfig")
    sb.add_argument(
        "--kubeconfig",
        default=None,
        help="use this cluster instead of the in-process Kubernetes API",
    )
    sb.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="inject a fault, e.g. crash_loop=true (repeatable)",
    )

    hist = sub.add_parser(
        "history",
        help="show inference latency over past runs",
        description="Show the inference latency history (time to first token, "
        "latency, tokens/s) as a table with sparklines.",
    )
    hist.add_argument(
        "--file", default=None, help="history file (default: ARTIFACTS_DIR/history.jsonl)"
    )
    hist.add_argument("--artifacts-dir", default=None, help="artifacts dir holding history.jsonl")
    hist.add_argument("--last", type=_count, default=20, help="runs to show (default 20)")
    hist.add_argument(
        "--png", default=None, metavar="PATH", help="also draw a PNG chart (needs matplotlib)"
    )

    sub.add_parser("graph", help="print the state machine as a Mermaid diagram")
    sub.add_parser(
        "flows",
        help="list the flows that can be run by name (run --flow NAME)",
        description="List the built-in flows and those installed packages register in the "
        "'orchestrator.flows' entry-point group, each with a one-line description.",
    )

    merge = sub.add_parser(
        "merge-junit",
        help="merge the JUnit files of several jobs into one, with a Markdown summary",
        description="Merge JUnit files (one per CI job of a matrix) into one document with "
        "every testsuite, and write a Markdown summary: a row per testsuite, the failures "
        "and the findings. Exit 0 when every file was read, 2 when one could not be.",
    )
    merge.add_argument("files", nargs="+", metavar="JUNIT_XML")
    merge.add_argument("-o", "--output", required=True, metavar="PATH", help="merged JUnit file")
    merge.add_argument(
        "--summary",
        metavar="PATH",
        default=None,
        help="append the Markdown summary here (e.g. $GITHUB_STEP_SUMMARY; '-': stdout)",
    )
    for command in sub.choices.values():
        # So that a usage error names the command's options, not the top level's.
        command.set_defaults(command_parser=command)
    return parser


def _merge_junit(ns: argparse.Namespace) -> int:
    from .engine import merge_junit, redact
    from .engine._atomic import atomic_write_text

    merged = merge_junit([Path(f) for f in ns.files])
    try:
        atomic_write_text(ns.output, merged.xml)
        # The reports were masked by their runs; the credential patterns (a Bearer value,
        # a URL's password) are masked here too, in a file a run did not write.
        text = redact(merged.markdown())
        if ns.summary == "-":
            sys.stdout.write(text)
        elif ns.summary:
            with open(ns.summary, "a", encoding="utf-8") as handle:
                handle.write(text)
    except OSError as exc:
        print(f"orchestrator merge-junit: cannot write: {exc}", file=sys.stderr)
        return EXIT_USAGE
    for problem in merged.problems:
        print(f"orchestrator merge-junit: {problem}", file=sys.stderr)
    counts = sum(r.tests for r in merged.rows)
    print(f"merged {len(merged.rows)} testsuite(s), {counts} testcases into {ns.output}")
    return EXIT_USAGE if merged.problems else 0


def _flags(ns: argparse.Namespace) -> dict[str, Any]:
    return {
        k.name: getattr(ns, k.name)
        for k in KEYS
        if k.flag and getattr(ns, k.name, None) is not None
    }


def fault_names() -> list[str]:
    """Every ``--sandbox-fault`` name, nested knobs as ``group.knob``, read from the
    sandbox's own model so that the list never falls behind it."""
    import typing

    from pydantic import BaseModel

    from .sandbox import Faults

    names = []
    for name, field in Faults.model_fields.items():
        args = typing.get_args(field.annotation) or (field.annotation,)
        group = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if group is None:
            names.append(name)
        else:
            names += [f"{name}.{sub}" for sub in group.model_fields]
    return names


def _check_faults(faults: dict[str, Any], flag: str = "--sandbox-fault") -> None:
    """Refuse an unknown knob or a bad value before anything starts."""
    from pydantic import ValidationError

    from .sandbox import Faults

    try:
        Faults.model_validate(faults)
    except ValidationError as exc:
        problems = []
        for e in exc.errors():
            name = ".".join(str(p) for p in e["loc"])
            if e["type"] == "extra_forbidden":
                problems.append(
                    f"{flag} {name}: no such fault; valid names: {', '.join(fault_names())}"
                )
            else:
                problems.append(f"{flag} {name}: {e['msg']}; got {e.get('input')!r}")
        raise ConfigError(problems) from None


class _FaultHelp(argparse.HelpFormatter):
    """Lists the fault names under --sandbox-fault when ``run --help`` is shown, and only
    then: importing the sandbox's model costs more than the rest of ``--help``."""

    def _expand_help(self, action: argparse.Action) -> str:
        text = super()._expand_help(action)
        if action.dest in ("sandbox_fault", "fault"):
            try:
                text += "; names: " + ", ".join(fault_names())
            except ImportError:  # the sandbox extra is not installed
                pass
        return text


def _parse_faults(items: Sequence[str]) -> dict[str, Any]:
    faults: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ConfigError([f"--sandbox-fault {item!r}: expected NAME=VALUE"])
        text = value.strip()
        parsed: Any
        if text.lower() in ("true", "false"):
            parsed = text.lower() == "true"
        else:
            try:
                parsed = float(text) if "." in text else int(text)
            except ValueError:
                parsed = text
        # "delays.pod_start=0" sets a nested knob.
        *parents, leaf = name.strip().replace("-", "_").split(".")
        target = faults
        for part in parents:
            node = target.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError([f"--sandbox-fault {item!r}: {part} is not a group of knobs"])
            target = node
        target[leaf] = parsed
    return faults


def entry() -> int:
    """The process's entry point (``python -m orchestrator`` and the ``orchestrator`` script).

    Unlike :func:`main`, which tests and library users call in-process, it owns the
    interpreter, so it can tune its garbage collector: see :func:`_settle_heap`.
    """
    # From the first instruction on, SIGTERM stops the run the way Ctrl-C does (an
    # exception, so that what exists is cleaned up and a report written), not by the
    # default of dying on the spot. Once the run's event loop starts, its own handlers
    # take over: they stop the flows instead. A SIGTERM the process was started with
    # ignored stays ignored, as an ignored SIGINT does (Python keeps that one itself).
    if not ignored(signal.SIGTERM):
        signal.signal(signal.SIGTERM, _terminated)
    code = main(own_process=True)
    # The work is done and every client closed: freezing spares the interpreter's final
    # collections a walk over every object the imports made (about 150 ms at exit).
    gc.freeze()
    return code


def _settle_heap() -> None:
    """Import what a run needs, then move everything imported out of the collector's sight.

    The imports make a few hundred thousand objects that live until exit. Each full
    collection during the run would walk all of them again (about 45 ms each, a few
    per run); frozen, they are left alone, and only the run's own objects are collected.
    """
    from .clients import KubeClient

    KubeClient.preload()
    gc.freeze()


class Terminated(BaseException):
    """SIGTERM, raised like KeyboardInterrupt is for SIGINT (see :func:`entry`)."""


def _terminated(signum: int, frame: object) -> None:
    raise Terminated()


def main(argv: Sequence[str] | None = None, *, own_process: bool = False) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")):
        argv = ["run", *argv]
    ns, unknown = parser.parse_known_args(argv)
    if unknown:
        # argparse would blame the top-level parser and print its usage; the options
        # belong to the command, so its usage is the one that helps.
        owner = getattr(ns, "command_parser", None) or parser
        owner.error(f"unrecognized arguments: {' '.join(unknown)}")
    started = time.time()
    try:
        return _main(ns, own_process=own_process)
    except (KeyboardInterrupt, Terminated) as exc:
        # A signal before the run's own handlers were in place (or after they were
        # removed): nothing was created yet, so a report saying so is all there is to do.
        signame = "SIGTERM" if isinstance(exc, Terminated) else "SIGINT"
        code = 128 + int(signal.Signals[signame])
        if ns.command == "run":
            _report_stopped(signame, getattr(ns, "artifacts_dir", None), started)
        print(f"orchestrator: interrupted by {signame} (exit code {code})", file=sys.stderr)
        return code


def _written_since(path: Path, started: float) -> bool:
    try:
        return path.stat().st_mtime >= started
    except OSError:
        return False


def _report_stopped(signame: str, artifacts_dir: str | None, started: float) -> None:
    target = Path(artifacts_dir or os.environ.get("ORCHESTRATOR_ARTIFACTS_DIR") or "test-results")
    # A run that got far enough to report itself (the signal came at its very end) keeps
    # its reports: junit.xml, and run.json beside it or, for several flows, one in each
    # flow's folder.
    run_jsons = [target / "run.json", *target.glob("*/run.json")]
    if _written_since(target / "junit.xml", started) and any(
        _written_since(path, started) for path in run_jsons
    ):
        return
    problems: list[object]
    try:
        from .engine import write_stopped_reports

        problems = list(
            write_stopped_reports(
                target, "orchestrator", signame, f"interrupted by {signame} before the run started"
            )
        )
    except Exception as exc:  # a report is best effort here; the exit code is the verdict
        problems = [exc]
    for problem in problems:
        print(f"orchestrator: report not written: {problem}", file=sys.stderr)


def _main(ns: argparse.Namespace, *, own_process: bool) -> int:
    if ns.command == "graph":
        return _graph()
    if ns.command == "flows":
        return _list_flows()
    if ns.command == "history":
        return _history(ns)
    if ns.command == "merge-junit":
        return _merge_junit(ns)
    try:
        if ns.command == "sandbox":
            return _serve_sandbox(ns)
        from .config import load_settings  # pydantic: only for commands that run

        settings = load_settings(_flags(ns), config_file=ns.config)
        faults = _parse_faults(ns.sandbox_fault)
        if faults and not ns.sandbox:
            raise ConfigError(["--sandbox-fault needs --sandbox"])
        if ns.keep_sandbox and not ns.sandbox:
            raise ConfigError(["--keep-sandbox needs --sandbox: add --sandbox, or drop it"])
        if faults:
            _check_faults(faults)
        _check_flows(settings.flow_names())
    except ConfigError as exc:
        report_config_error(exc.problems, getattr(ns, "artifacts_dir", None))
        return EXIT_USAGE
    from ._app import EnvironmentOptions, run_app

    if ns.sandbox and (ns.create_cluster or ns.backend_dir):
        report_config_error(
            [
                "--sandbox brings its own backend and cluster: it cannot be combined "
                "with --create-cluster or --backend-dir"
            ],
            ns.artifacts_dir,
        )
        return EXIT_USAGE
    if ns.load_image and not ns.create_cluster:
        report_config_error(
            [
                "--load-image loads into the kind cluster this run creates: it needs --create-cluster"
            ],
            ns.artifacts_dir,
        )
        return EXIT_USAGE
    if ns.backend_dir and not Path(ns.backend_dir).is_dir():
        report_config_error(
            [f"--backend-dir (command line): {ns.backend_dir} is not a directory"], ns.artifacts_dir
        )
        return EXIT_USAGE
    problems = _environment_problems(ns)
    from ._loop import LoopChoiceError, loop_factory

    try:
        loop_factory()  # checked now; a chosen uvloop is imported before the heap is settled
    except LoopChoiceError as exc:
        problems.append(str(exc))
    if problems:
        report_config_error(problems, ns.artifacts_dir)
        return EXIT_USAGE
    environment = EnvironmentOptions(
        create_cluster=ns.create_cluster,
        cluster_name=ns.cluster_name,
        keep_cluster=ns.keep_cluster,
        reuse_cluster=ns.reuse_cluster,
        backend_dir=ns.backend_dir,
        backend_command=ns.backend_command,
        backend_port=ns.backend_port,
        keep_sandbox=ns.keep_sandbox,
        load_images=tuple(ns.load_image),
    )
    if own_process:
        _settle_heap()
    return run_app(
        settings, sandbox=ns.sandbox, faults=faults, live=not ns.no_live, environment=environment
    )


def _environment_problems(ns: argparse.Namespace) -> list[str]:
    """The environment flags, checked before anything starts: a bad one would otherwise
    fail a phase minutes later (or a child process with a message of its own)."""
    import shlex

    from .config import DNS_LABEL

    problems = []
    if not 1 <= ns.backend_port <= 65535:
        problems.append(
            f"--backend-port (command line): must be a port between 1 and 65535; "
            f"got {ns.backend_port}"
        )
    name = ns.cluster_name
    if len(name) > 50 or not DNS_LABEL.match(name):
        problems.append(
            "--cluster-name (command line): must be a kind cluster name: at most 50 "
            f"lower-case letters, digits and '-', starting and ending with a letter or digit; "
            f"got {name!r}"
        )
    try:
        if not shlex.split(ns.backend_command):
            problems.append("--backend-command (command line): is empty")
    except ValueError as exc:
        problems.append(
            f"--backend-command (command line): cannot be split into words ({exc}); "
            f"got {ns.backend_command!r}"
        )
    return problems


def _port(text: str) -> int:
    """A TCP port for a server to listen on: 0 (any free one) to 65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number; got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be between 0 and 65535; got {value}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number; got {text!r}") from None
    if not 1 <= value <= 100_000:
        raise argparse.ArgumentTypeError(f"must be between 1 and 100000; got {value}")
    return value


def report_config_error(problems: Sequence[str], artifacts_dir: str | None) -> None:
    """Say what is wrong, and leave reports saying it too: a CI job whose configuration
    is broken should show why in its test report, not a missing file, and never the
    previous run's verdict (junit.xml and run.json are both rewritten, or removed)."""
    print("orchestrator: configuration error:", file=sys.stderr)
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)
    target = Path(artifacts_dir or os.environ.get("ORCHESTRATOR_ARTIFACTS_DIR") or "test-results")
    try:
        from .engine import write_error_reports

        # Named for what failed, not for a provider: no flow ran.
        unwritten = write_error_reports(target, "configuration", "; ".join(problems))
    except ValueError as exc:
        print(f"orchestrator: (no reports written: {exc})", file=sys.stderr)
        return
    for missing in unwritten:
        print(f"orchestrator: report not written: {missing}", file=sys.stderr)


def _history(ns: argparse.Namespace) -> int:
    from rich.console import Console

    from .history import HISTORY_FILE, HistoryError, load, render, write_png

    base = ns.artifacts_dir or os.environ.get("ORCHESTRATOR_ARTIFACTS_DIR") or "test-results"
    path = Path(ns.file) if ns.file else Path(base) / HISTORY_FILE
    if ns.last < 1:
        print("orchestrator: error: --last must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    try:
        entries = load(path)
        if not entries:
            print(
                f"orchestrator: no history yet in {path}: every run appends to it", file=sys.stderr
            )
            return EXIT_OK
        Console().print(render(entries, last=ns.last))
        if ns.png:
            print(f"chart written to {write_png(entries[-ns.last :], Path(ns.png))}")
    except HistoryError as exc:
        print(f"orchestrator: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def _check_flows(names: Sequence[str]) -> None:
    """Refuse a flow that is not installed, or whose factory does not load, before anything
    starts: a misspelt --flow is a usage error, not a failed run."""
    from .flows import FlowNotFound, find_flow

    problems = []
    for name in names:
        try:
            find_flow(name).load()
        except FlowNotFound as exc:
            problems.append(f"--flow/--provider: {exc}")
    if problems:
        raise ConfigError(problems)


def _list_flows() -> int:
    from .flows import installed_flows

    flows = installed_flows()
    width = max(len(name) for name in flows)
    for name, entry in sorted(flows.items()):
        print(f"{name:<{width}}  {entry.description()}  [{entry.origin}]")
    return EXIT_OK


def _graph() -> int:
    from .engine import machine_mermaid
    from .flows.kaito import KaitoFlow, KaitoSettings

    # Only the phases are read: no client is needed to draw the machine.
    flow = KaitoFlow(
        KaitoSettings(api_url="http://unused"),
        api=None,  # type: ignore[arg-type]
        kube=None,  # type: ignore[arg-type]
        inference=None,  # type: ignore[arg-type]
    )
    print(machine_mermaid(flow))
    return EXIT_OK


def _serve_sandbox(ns: argparse.Namespace) -> int:
    import asyncio

    try:
        faults = _parse_faults(ns.fault)
        _check_faults(faults, "--fault")
    except ConfigError as exc:
        report_config_error(exc.problems, None)
        return EXIT_USAGE
    try:
        from .sandbox import Faults, SandboxOptions, serve_forever
    except ImportError as exc:
        print(
            f"orchestrator: the sandbox needs the 'sandbox' extra ({exc}); "
            "install with: pip install 'orchestrator[sandbox]'",
            file=sys.stderr,
        )
        return EXIT_USAGE
    workdir = Path(ns.workdir or ".sandbox").resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    options = SandboxOptions(
        workdir=workdir,
        port=ns.port,
        kubeconfig=Path(ns.kubeconfig) if ns.kubeconfig else None,
        faults=Faults.model_validate(faults),
        crd_dir=Path(os.environ["KAITO_CRDS_DIR"]) if os.environ.get("KAITO_CRDS_DIR") else None,
    )

    async def serve() -> int:
        # Ctrl-C and SIGTERM stop the sandbox cleanly: its model servers are child
        # processes, and a plain kill would leave them running. One the process was
        # started with ignored (a background job's Ctrl-C) stays ignored.
        from .engine import SignalHandlers

        task = asyncio.current_task()
        assert task is not None
        got: list[int] = []

        def stop(sig: signal.Signals) -> None:
            got.append(128 + sig)
            task.cancel()

        with SignalHandlers(stop):
            try:
                await serve_forever(options)
            except asyncio.CancelledError:
                pass
        return got[0] if got else EXIT_OK

    return asyncio.run(serve())


__all__ = ["main", "build_parser", "Settings", "signal"]


def __getattr__(name: str) -> Any:
    """``Settings`` on first use: importing it (and pydantic) would slow ``--help``."""
    if name == "Settings":
        from .config import Settings

        return Settings
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
