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
from .dynamo import DynamoOperator
from .faults import Faults, SandboxState, TimelineEntry
from .kaito import KaitoController
from .kubeapi import KubeFaults
from .kuberay import KubeRayOperator
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
    #: The real KubeRay and Dynamo CRDs, by provider id ("kuberay", "dynamo"); without
    #: one, the install route creates small CRDs that accept any object.
    provider_crds: dict[str, Path] = field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int = 0
    model_path: Path | None = None  # a GGUF to serve instead of the packaged one


class Sandbox:
    """``async with Sandbox(options) as sandbox:`` then talk to ``sandbox.api_url``."""

    def __init__(self, options: SandboxOptions) -> None:
        self.options = options
        self.state = SandboxState(options.faults, kube_faults=options.kubeconfig is None)
        self.api_url = ""
        self.kubeconfig: Path = options.kubeconfig or options.workdir / "kubeconfig"
        self._stack = contextlib.AsyncExitStack()
        self._kubefoundry: KubeFoundryServer | None = None

    @property
    def faults(self) -> Faults:
        return self.state.faults

    def update_faults(self, patch: dict[str, Any]) -> Faults:
        """The same merge as ``POST /_sandbox/faults``, for in-process callers."""
        return self.state.update(patch)

    @property
    def own_kube_api(self) -> bool:
        """True when the sandbox runs its own Kubernetes API (and so can break it on demand)."""
        return self.options.kubeconfig is None

    async def restart_backend(self, down_for: float = 0.0) -> None:
        """Stop the KubeFoundry stand-in, keep it down ``down_for`` seconds, start it on the same port."""
        assert self._kubefoundry is not None, "the sandbox is not running"
        await self._kubefoundry.restart(down_for)

    @property
    def timeline(self) -> list[TimelineEntry]:
        return list(self.state.timeline)

    async def __aenter__(self) -> Sandbox:
        opts = self.options
        opts.workdir.mkdir(parents=True, exist_ok=True)
        try:
            kubeapi = None
            if opts.kubeconfig is None:
                from .kubeapi import KubeAPIServer

                kubeapi = KubeAPIServer(opts.host, faults=_LiveKubeFaults(self.state))
                await kubeapi.start()
                self._stack.push_async_callback(kubeapi.stop)
                self.kubeconfig = kubeapi.write_kubeconfig(opts.workdir / "kubeconfig")
            # The stand-ins reach their own API server in-process (watches over HTTP), and
            # a real cluster (the test cluster) over HTTP like any client.
            kube = await Kube.from_kubeconfig(self.kubeconfig, local=kubeapi)
            self._stack.push_async_callback(kube.close)

            fleet = ModelFleet(self.state, opts.workdir, opts.host, opts.model_path)
            self._stack.push_async_callback(fleet.stop)
            await fleet.start()

            controller = asyncio.create_task(
                KaitoController(kube, fleet, self.state).run(), name="kaito controller"
            )
            controller.add_done_callback(_report_crash)
            self._stack.push_async_callback(_cancel, controller)
            for operator in (KubeRayOperator, DynamoOperator):
                task = asyncio.create_task(
                    operator(kube, fleet, self.state).run(), name=operator.label
                )
                task.add_done_callback(_report_crash)
                self._stack.push_async_callback(_cancel, task)

            kubefoundry = KubeFoundryServer(
                kube,
                self.state,
                opts.host,
                opts.port,
                opts.auth_token,
                opts.crd_dir,
                opts.provider_crds,
            )
            self._stack.push_async_callback(kubefoundry.stop)
            await kubefoundry.start()
            self._kubefoundry = kubefoundry
            self.api_url = kubefoundry.url
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()


async def serve_forever(options: SandboxOptions) -> None:
    """Run a sandbox until cancelled (``python -m orchestrator sandbox``)."""
    async with Sandbox(options) as sandbox:
        # Lines a shell takes as they are (`export` them), then what to do with them.
        print(f"API_URL={sandbox.api_url}", flush=True)
        print(f"KUBECONFIG={sandbox.kubeconfig}", flush=True)
        print(
            "sandbox serving: export the two lines above, then run "
            "`python -m orchestrator run`; Ctrl-C stops it",
            flush=True,
        )
        await asyncio.Event().wait()


class _LiveKubeFaults(KubeFaults):
    """The in-process API server's fault switches, read from (and consumed in) the sandbox's faults.

    So ``POST /_sandbox/faults`` and ``update_faults`` reach the Kubernetes API like any
    other knob, and ``GET /_sandbox/faults`` shows how many 410s are still to come.
    """

    #: Like the test cluster's API server: only watches wait for the watch cache.
    too_many_requests_lists = False

    def __init__(self, state: SandboxState) -> None:  # no dataclass fields of its own
        self._state = state

    @property
    def watch_cut_after(self) -> float | None:
        return self._state.faults.watch_cut_after

    @watch_cut_after.setter
    def watch_cut_after(self, value: float | None) -> None:
        self._state.faults.watch_cut_after = value

    @property
    def gone_once(self) -> bool:
        return self._state.faults.watch_gone > 0

    @gone_once.setter
    def gone_once(self, value: bool) -> None:
        # The API server clears the flag when it has answered one 410: count one down.
        faults = self._state.faults
        faults.watch_gone = (
            max(0, faults.watch_gone - 1) if not value else max(1, faults.watch_gone)
        )

    @property
    def gone_label_selector(self) -> str | None:
        return self._state.faults.watch_gone_selector

    @gone_label_selector.setter
    def gone_label_selector(self, value: str | None) -> None:
        self._state.faults.watch_gone_selector = value

    @property
    def too_many_requests_after_crd(self) -> float:
        return self._state.faults.too_many_requests_after_crd

    @too_many_requests_after_crd.setter
    def too_many_requests_after_crd(self, value: float) -> None:
        self._state.faults.too_many_requests_after_crd = value


async def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _report_crash(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("%s stopped: %r", task.get_name(), task.exception())
