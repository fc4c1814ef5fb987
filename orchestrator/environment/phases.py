"""The environment as engine phases, so its steps are timed and reported like the flow's.

A run that makes its own cluster spends minutes before the flow starts; that time
belongs in the same report as the flow's phases, with the same deadlines and the
same one-line reasons. So the setup steps are ordinary :class:`Phase` objects a
run puts in front of the flow's own:

==================  =====================  ===========================================
name                title                  what it does
==================  =====================  ===========================================
``create_cluster``  Create cluster         ``kind create cluster`` (retried once), then
                                           GET /version through the new kubeconfig
``wait_nodes``      Wait nodes Ready       watch nodes until each is Ready=True
``load_images``     Load images            ``kind load docker-image`` the images asked
                                           for (a cached model image), if any
``start_backend``   Start backend          start the process, wait for /api/health 200
==================  =====================  ===========================================

Teardown is not a phase: it must run whatever the cleanup policy says (a backend
left running holds its port; the cluster goes unless it is to be kept), and after
the flow's own cleanup, which still needs both. :func:`teardown` stops the backend
first (it talks to the cluster), then deletes the cluster, and reports each step's
time and any error instead of raising, so one failure does not skip the other.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ..engine import Phase, PhaseContext, PhaseFailed
from ._backend import BackendProcess
from ._errors import EnvironmentSetupError
from ._kind import KindCluster

CREATE_CLUSTER_TIMEOUT = 300.0
WAIT_NODES_TIMEOUT = 180.0
START_BACKEND_TIMEOUT = 120.0
LOAD_IMAGES_TIMEOUT = 300.0


def setup_phases(
    cluster: KindCluster | None,
    backend: BackendProcess | None,
    *,
    create_timeout: float = CREATE_CLUSTER_TIMEOUT,
    nodes_timeout: float = WAIT_NODES_TIMEOUT,
    backend_timeout: float = START_BACKEND_TIMEOUT,
    load_images: list[str] | None = None,
    load_timeout: float = LOAD_IMAGES_TIMEOUT,
) -> list[Phase]:
    """The phases that bring the environment up, in order; none for what is ``None``.

    Each phase fails with the environment's one-line error as its reason (and the
    log tail, when there is one, as its detail).
    """
    phases: list[Phase] = []
    if cluster is not None:

        async def create(ctx: PhaseContext) -> None:
            await cluster.create()
            ctx.set_property("cluster", cluster.name)
            ctx.set_property("cluster_created", str(cluster.created).lower())
            ctx.set_property(
                "kubernetes_version",
                await cluster.check_reachable(timeout=max(1.0, min(ctx.remaining(), 15.0))),
            )

        async def nodes(ctx: PhaseContext) -> None:
            ctx.progress("watching nodes")
            names = await cluster.wait_nodes_ready(cluster.clock() + _own_share(ctx))
            ctx.set_property("nodes", ",".join(names))

        phases += [
            Phase("create_cluster", "Create cluster", create_timeout, _reported(create)),
            Phase("wait_nodes", "Wait nodes Ready", nodes_timeout, _reported(nodes)),
        ]
        if load_images:
            images = list(load_images)

            async def load(ctx: PhaseContext) -> None:
                began = ctx.clock()
                await cluster.load_images(images)
                ctx.set_property("loaded_images", ",".join(images))
                ctx.set_property("load_images_seconds", f"{ctx.clock() - began:.3f}")

            phases.append(Phase("load_images", "Load images", load_timeout, _reported(load)))
    if backend is not None:

        async def start(ctx: PhaseContext) -> None:
            began = ctx.clock()
            await backend.start()
            ctx.progress(f"waiting for {backend.health_url}")
            await backend.wait_healthy(backend.clock() + _own_share(ctx))
            ctx.set_property("backend_url", backend.url)
            ctx.set_property("backend_healthy_seconds", f"{ctx.clock() - began:.3f}")

        phases.append(Phase("start_backend", "Start backend", backend_timeout, _reported(start)))
    return phases


@dataclass(frozen=True)
class TeardownStep:
    """What one teardown step did: ``error`` is None when it went well (or had nothing to do)."""

    name: str
    title: str
    duration: float
    error: str | None = None
    #: False when there was nothing to do: no backend, a cluster not ours, or kept.
    acted: bool = True


async def teardown(
    cluster: KindCluster | None,
    backend: BackendProcess | None,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> list[TeardownStep]:
    """Stop the backend, then delete the cluster (only if this run created it and it is
    not kept). Never raises for a step's failure: the result says what happened.

    Shielded from cancellation by the steps themselves, so it also works while an
    interrupted run unwinds.
    """
    steps: list[TeardownStep] = []
    if backend is not None:

        async def stop() -> bool:
            return await backend.stop() is not None

        steps.append(await _timed("stop_backend", "Stop backend", stop, clock))
    if cluster is not None:
        steps.append(await _timed("delete_cluster", "Delete cluster", cluster.delete, clock))
    return steps


async def _timed(
    name: str, title: str, step: Callable[[], Awaitable[bool]], clock: Callable[[], float]
) -> TeardownStep:
    began = clock()
    try:
        acted = await step()
    except EnvironmentSetupError as exc:
        return TeardownStep(name, title, clock() - began, error=str(exc))
    return TeardownStep(name, title, clock() - began, acted=bool(acted))


def _own_share(ctx: PhaseContext) -> float:
    """Seconds for a wait inside a phase: a little less than the phase has left, so that
    the wait's own message (which node, what the backend logged) is the reason given,
    rather than the engine's bare "timed out"."""
    remaining = ctx.remaining()
    return remaining - 1.0 if remaining > 2.0 else remaining


def _reported(
    body: Callable[[PhaseContext], Awaitable[None]],
) -> Callable[[PhaseContext], Awaitable[None]]:
    """Turn the environment's error into the engine's PhaseFailed (one-line reason + detail)."""

    async def run(ctx: PhaseContext) -> None:
        try:
            await body(ctx)
        except EnvironmentSetupError as exc:
            raise PhaseFailed(str(exc), detail=exc.detail) from None

    return run
