"""The sandbox: KubeFoundry, KAITO and model servers standing in for a real installation.

One async context manager starts everything on loopback (and a small in-process
Kubernetes API when no kubeconfig is given), and stops everything on the way out,
model children included, even when the surrounding task is cancelled.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from ._kube import Kube
from ._kubefoundry import KubeFoundryServer
from .faults import Faults, SandboxState, TimelineEntry
from .kaito import KaitoController
from .models import ModelFleet

log = logging.getLogger(__name__)


@dataclass
class SandboxOptions:
    """How to run a sandbox. ``kubeconfig=None`` starts the in-process Kubernetes API."""

    workdir: Path
    kubeconfig: Path | None = None
    faults: Faults = field(default_factory=Faults)
    auth_token: str | None = None
    crd_dir: Path | None = None
    host: str = "127.0.0.1"
    port: int = 0
    model_path: Path | None = None  # a GGUF to serve instead of the packaged one


class Sandbox:
    """``async with Sandbox(options) as sandbox:`` then talk to ``sandbox.api_url``."""

    def __init__(self, options: SandboxOptions) -> None:
        self.options = options
        self.state = SandboxState(options.faults)
        self.api_url = ""
        self.kubeconfig: Path = options.kubeconfig or options.workdir / "kubeconfig"
        self._stack = contextlib.AsyncExitStack()

    @property
    def faults(self) -> Faults:
        return self.state.faults

    def update_faults(self, patch: dict[str, Any]) -> Faults:
        """The same merge as ``POST /_sandbox/faults``, for in-process callers."""
        return self.state.update(patch)

    @property
    def timeline(self) -> list[TimelineEntry]:
        return list(self.state.timeline)

    async def __aenter__(self) -> Sandbox:
        opts = self.options
        opts.workdir.mkdir(parents=True, exist_ok=True)
        try:
            if opts.kubeconfig is None:
                from .kubeapi import KubeAPIServer

                kubeapi = KubeAPIServer(opts.host)
                await kubeapi.start()
                self._stack.push_async_callback(kubeapi.stop)
                self.kubeconfig = kubeapi.write_kubeconfig(opts.workdir / "kubeconfig")
            kube = await Kube.from_kubeconfig(self.kubeconfig)
            self._stack.push_async_callback(kube.close)

            fleet = ModelFleet(self.state, opts.workdir, opts.host, opts.model_path)
            self._stack.push_async_callback(fleet.stop)
            await fleet.start()

            controller = asyncio.create_task(KaitoController(kube, fleet, self.state).run(), name="kaito controller")
            controller.add_done_callback(_report_crash)
            self._stack.push_async_callback(_cancel, controller)

            kubefoundry = KubeFoundryServer(kube, self.state, opts.host, opts.port, opts.auth_token, opts.crd_dir)
            self._stack.push_async_callback(kubefoundry.stop)
            await kubefoundry.start()
            self.api_url = kubefoundry.url
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self._stack.aclose()


async def serve_forever(options: SandboxOptions) -> None:
    """Run a sandbox until cancelled (``python -m orchestrator sandbox``)."""
    async with Sandbox(options) as sandbox:
        print(f"KubeFoundry API: {sandbox.api_url}", flush=True)
        print(f"KUBECONFIG={sandbox.kubeconfig}", flush=True)
        await asyncio.Event().wait()


async def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _report_crash(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the KAITO controller stopped: %r", task.exception())
