"""Driving a run from its own output: act when a phase starts, and check what every row checks.

A fault that must land *in* a phase (a backend restart, a signal) is triggered when the
run prints ``<Phase title> ... started``, so tests wait on events with a deadline and
never on sleeps.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import _zygote
import anyio
import anyio.abc
import pytest
from e2e_harness import Result, command, drive, hung, leftovers

from orchestrator.clients import CRDS, PODS, SERVICES, KubeClient, KubeFoundryClient
from orchestrator.flows import WatchSpec, wait_for
from orchestrator.sandbox import Sandbox

NAME = "integration-test-llama"


def started(title: str) -> str:
    return f"{title} ... started"


async def run_with_hooks(
    sb: Sandbox,
    tmp_path: Path,
    *args: str,
    hooks: list[tuple[str, Callable[[anyio.abc.Process], Awaitable[None] | None]]],
    env: dict[str, str] | None = None,
    timeout: float = 120,
    signals: Mapping[int, _zygote.Disposition] = _zygote.RUN_SIGNALS,
    fresh: bool = False,
) -> Result:
    """Run the real command; when its output shows each hook's marker (in order), call the hook.

    A run still going at the deadline is stopped and fails the test as
    :func:`e2e_harness.run_orchestrator` does, with its output and the sandbox's log.
    ``signals`` and ``fresh`` are :func:`e2e_harness.drive`'s: how the process starts.
    """
    artifacts = tmp_path / "artifacts"
    argv, full_env = command(sb, artifacts, *args, env=env)
    pending = list(hooks)

    async def on_output(output: str, proc: anyio.abc.Process) -> None:
        while pending and pending[0][0] in output:
            _, hook = pending.pop(0)
            done = hook(proc)
            if done is not None:
                await done

    ended = await drive(argv, full_env, tmp_path, timeout, on_output, signals=signals, fresh=fresh)
    if ended.stopped is not None:
        pytest.fail(hung(ended, timeout, sb), pytrace=False)
    assert not pending, f"the run never printed {[m for m, _ in pending]}:\n{ended.stdout}"
    return Result(ended.code, ended.stdout, ended.stderr, ended.seconds, artifacts)


async def install_kaito_first(sb: Sandbox, deadline: float = 150.0) -> None:
    """Install KAITO through the backend and wait, on watches, until it says installed.

    For a test whose subject comes after Install: a run then finds KAITO installed (one
    status request), as a user's second run does, and the part of a run that a loaded
    machine stretches most (the API server making the CRDs served, the operator pod
    started) is done before the run's budget starts counting. ``deadline``: only a hang
    reaches it.
    """
    kube = await KubeClient.from_kubeconfig(str(sb.kubeconfig))
    api = KubeFoundryClient(sb.api_url)
    try:
        with anyio.fail_after(deadline):
            await api.install_provider("kaito")

            async def installed() -> bool | None:
                return True if (await api.provider_status("kaito")).installed else None

            watches = [
                WatchSpec(PODS, "kaito-workspace", "app.kubernetes.io/name=kaito-workspace"),
                WatchSpec(CRDS, field_selector="metadata.name=workspaces.kaito.sh"),
            ]
            await wait_for(installed, kube=kube, watches=watches, recheck=5.0)
    finally:
        await api.aclose()
        await kube.aclose()


def duration(result: Result, phase: str) -> float:
    return next(p for p in result.run_json()["phases"] if p["name"] == phase)["duration"]


def run_log(result: Result) -> str:
    return "\n".join(result.run_json()["log"])


async def assert_clean(sb: Sandbox, namespace: str = "kaito-workspace") -> None:
    """Nothing the run created is left: checked through the backend and the cluster, where
    Services carrying the run's label count as much as the Workspace and its pods."""
    kube = await KubeClient.from_kubeconfig(str(sb.kubeconfig))
    try:
        assert await leftovers(sb, kube=kube) == []
        services = await kube.list(SERVICES, namespace, label_selector=f"kaito.sh/workspace={NAME}")
        # KAITO's own Services carry no label: they are found by the names KAITO gives them.
        named = [
            await kube.list(SERVICES, namespace, field_selector=f"metadata.name={name}")
            for name in (NAME, f"{NAME}-headless")
        ]
    finally:
        await kube.aclose()
    assert [s["metadata"]["name"] for s in services.get("items") or []] == []
    assert [s["metadata"]["name"] for listing in named for s in listing.get("items") or []] == []
