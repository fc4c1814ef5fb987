"""The ``run`` command: build the clients and the flow, run the engine, map the verdict.

Kept apart from ``cli.py`` so that argument parsing and ``--help`` never pay
for importing the engine, the clients or the sandbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import tempfile
from pathlib import Path
from typing import Any, AsyncIterator

from rich.console import Console

from .clients import InferenceClient, InferenceRoute, KubeClient, KubeFoundryClient
from .config import Settings
from .engine import Budget, ConsoleReporter, JUnitReporter, Runner
from .flows.kaito import KaitoFlow, KaitoSettings

EXIT_USAGE = 2


def kaito_settings(settings: Settings) -> KaitoSettings:
    return KaitoSettings(
        api_url=settings.api_url,
        namespace=settings.namespace,
        deployment_name=settings.deployment_name,
        model=settings.test_model,
        install_timeout=settings.seconds("kaito_install_timeout"),
        deploy_timeout=settings.seconds("deploy_timeout"),
        ready_timeout=settings.seconds("deployment_ready_timeout"),
        inference_timeout=settings.seconds("inference_timeout"),
        delete_timeout=settings.seconds("delete_timeout"),
    )


def inference_route(settings: Settings) -> InferenceRoute:
    if settings.inference in ("service-proxy", "backend-proxy"):
        return InferenceRoute(settings.inference)  # type: ignore[arg-type]
    return InferenceRoute("url", base_url=settings.inference)


@contextlib.asynccontextmanager
async def _environment(settings: Settings, sandbox: bool, faults: dict[str, Any],
                       console: Console) -> AsyncIterator[tuple[str, str | None]]:
    """Yield ``(api_url, kubeconfig)``: the configured ones, or a sandbox's."""
    if not sandbox:
        yield settings.api_url, settings.kubeconfig
        return
    from .sandbox import Faults, Sandbox, SandboxOptions

    with tempfile.TemporaryDirectory(prefix="orchestrator-sandbox-") as workdir:
        options = SandboxOptions(workdir=Path(workdir), faults=Faults.model_validate(faults),
                                 auth_token=settings.token.get_secret_value() if settings.token else None)
        async with Sandbox(options) as sb:
            console.print(f"sandbox: KubeFoundry API at {sb.api_url}, kubeconfig {sb.kubeconfig}",
                          highlight=False)
            yield sb.api_url, str(sb.kubeconfig)


async def _run(settings: Settings, sandbox: bool, faults: dict[str, Any], live: bool) -> int:
    console = Console(stderr=False)
    artifacts = Path(settings.artifacts_dir)
    artifacts.mkdir(parents=True, exist_ok=True)
    async with _environment(settings, sandbox, faults, console) as (api_url, kubeconfig):
        try:
            kube = await KubeClient.from_kubeconfig(kubeconfig)
        except Exception as exc:  # the loader raises many kinds; all mean "bad kubeconfig"
            from .cli import report_config_error

            where = kubeconfig or "KUBECONFIG / ~/.kube/config"
            report_config_error([f"kubeconfig ({where}): cannot be loaded: {type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0] if str(exc) else ''}"],
                                settings.artifacts_dir)
            return EXIT_USAGE
        token = settings.token.get_secret_value() if settings.token else None
        api = KubeFoundryClient(api_url, token=token)
        inference = InferenceClient(inference_route(settings), kube=kube, backend_url=api_url,
                                    token=token)
        flow_settings = kaito_settings(settings)
        if flow_settings.api_url != api_url:
            flow_settings = KaitoSettings(**{**flow_settings.__dict__, "api_url": api_url})
        flow = KaitoFlow(flow_settings, api=api, kube=kube, inference=inference)
        junit = artifacts / "junit.xml"
        runner = Runner(
            flow,
            budget=Budget(total=settings.seconds("test_timeout"),
                          reserve=settings.seconds("cleanup_reserve"),
                          # Cleanup deletes and waits like the Delete phase does.
                          cleanup_cap=max(settings.seconds("cleanup_reserve"),
                                          settings.seconds("delete_timeout"))),
            reporters=[ConsoleReporter(console, live=None if live else False, junit_path=junit),
                       JUnitReporter(junit)],
            artifacts_dir=artifacts,
            cleanup_policy=settings.cleanup_policy(),
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, runner.interrupt, sig.name)
        try:
            record = await runner.run()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            await api.aclose()
            await inference.aclose()
            await kube.aclose()
        return record.exit_code


def run_app(settings: Settings, *, sandbox: bool, faults: dict[str, Any], live: bool) -> int:
    try:
        return asyncio.run(_run(settings, sandbox, faults, live))
    except KeyboardInterrupt:
        # Only reachable before the runner installed its handlers (or after it ended).
        return 130
