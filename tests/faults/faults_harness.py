"""Driving a run from its own output: act when a phase starts, and check what every row checks.

A fault that must land *in* a phase (a backend restart, a signal) is triggered when the
run prints ``<Phase title> ... started``, so tests wait on events with a deadline and
never on sleeps.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
from anyio.streams.text import TextReceiveStream
from e2e_harness import Result, command, leftovers

from orchestrator.clients import SERVICES, KubeClient
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
) -> Result:
    """Run the real command; when its output shows each hook's marker (in order), call the hook."""
    artifacts = tmp_path / "artifacts"
    argv, full_env = command(sb, artifacts, *args, env=env)
    pending = list(hooks)
    output = ""
    started_at = time.monotonic()
    async with await anyio.open_process(argv, env=full_env, cwd=tmp_path) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        err: list[str] = []

        async def drain_stderr() -> None:
            async for chunk in TextReceiveStream(proc.stderr):  # type: ignore[arg-type]
                err.append(chunk)

        with anyio.fail_after(timeout):
            async with anyio.create_task_group() as tg:
                tg.start_soon(drain_stderr)
                async for chunk in TextReceiveStream(proc.stdout):
                    output += chunk
                    while pending and pending[0][0] in output:
                        _, hook = pending.pop(0)
                        done = hook(proc)
                        if done is not None:
                            await done
                code = await proc.wait()
    assert not pending, f"the run never printed {[m for m, _ in pending]}:\n{output}"
    return Result(code, output, "".join(err), time.monotonic() - started_at, artifacts)


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
    finally:
        await kube.aclose()
    assert [s["metadata"]["name"] for s in services.get("items") or []] == []
