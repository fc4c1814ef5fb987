"""The operator stand-ins' promise on deletion: the finalizer goes, whatever the bring-up did.

A stand-in keeps its finalizer on an object being deleted only while the ``stuck_delete``
fault asks for it. These tests drive the shared reconcile (``CustomResourceOperator``)
on a ConfigMap, which takes finalizers as a custom resource does, on both Kubernetes
backends: a bring-up that loses its cancel, and a teardown that fails once.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from orchestrator.sandbox._kube import JSON, Kube
from orchestrator.sandbox._operator import CustomResourceOperator, Worker, cancel
from orchestrator.sandbox.faults import Faults, SandboxState

pytestmark = pytest.mark.anyio

NS = "default"
NAME = "teardown-subject"
KEY = (NS, NAME)
FINALIZER = "sandbox.orchestrator/test-finalizer"
#: Only a hang reaches it: each wait below ends on an event.
DEADLINE = 60.0


class Standin(CustomResourceOperator):
    """An operator of ConfigMaps: the shared reconcile, with a bring-up the test holds."""

    finalizer = FINALIZER
    label = "test-operator"

    def __init__(self, kube: Kube, state: SandboxState, *, gone_fails: int = 0) -> None:
        super().__init__(kube, None, state)  # type: ignore[arg-type]  # no model fleet here
        self.holding = asyncio.Event()
        self.carried_on = asyncio.Event()
        self.gone_calls = 0
        self.gone_fails = gone_fails

    def path(self, namespace: str, name: str) -> str:
        return f"/api/v1/namespaces/{namespace}/configmaps/{name}"

    async def provision(self, key: tuple[str, str], obj: JSON) -> None:
        self.holding.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            # Lost, as asyncio.wait_for (Python 3.11) loses a cancel that lands in the
            # iteration its wait ends (test_cancel_ends_a_task_whose_wait_for_dropped_it).
            pass
        self.carried_on.set()
        await asyncio.Event().wait()  # and holds the object, as a bring-up keeps its pod

    async def gone(self, namespace: str, name: str) -> None:
        self.gone_calls += 1
        if self.gone_calls <= self.gone_fails:
            raise RuntimeError("the API server answered 500")


@pytest.fixture
async def api(kube: Any) -> AsyncIterator[Kube]:
    client = await Kube.from_kubeconfig(kube.kubeconfig)
    try:
        yield client
    finally:
        await client.close()


async def deleting(api: Kube) -> JSON:
    """The subject, with the operator's finalizer, deleted: it now has a deletionTimestamp."""
    await api.create(
        f"/api/v1/namespaces/{NS}/configmaps",
        {"metadata": {"name": NAME, "namespace": NS, "finalizers": [FINALIZER]}, "data": {}},
    )
    await api.delete(f"/api/v1/namespaces/{NS}/configmaps/{NAME}")
    obj = await api.get(f"/api/v1/namespaces/{NS}/configmaps/{NAME}")
    assert obj["metadata"].get("deletionTimestamp"), obj
    return obj


async def test_the_finalizer_goes_although_the_bring_up_lost_its_cancel(api: Kube) -> None:
    op = Standin(api, SandboxState())
    worker = Worker(latest={})
    try:
        obj = await api.create(
            f"/api/v1/namespaces/{NS}/configmaps",
            {"metadata": {"name": NAME, "namespace": NS}, "data": {}},
        )
        assert obj is not None
        async with asyncio.timeout(DEADLINE):
            await op.reconcile(KEY, worker, obj)  # adds the finalizer, starts the bring-up
            await op.holding.wait()
        await api.delete(op.path(*KEY))
        being_deleted = await api.get(op.path(*KEY))
        assert FINALIZER in being_deleted["metadata"]["finalizers"]

        async with asyncio.timeout(DEADLINE):
            # Before: the cancel was asked once, lost, and this waited for the bring-up
            # for ever; the teardown never started and the finalizer stayed.
            await op.reconcile(KEY, worker, being_deleted)
            assert worker.provision is not None and worker.provision.cancelled()
            assert worker.finalize is not None
            await worker.finalize
            await api.wait_gone(f"/api/v1/namespaces/{NS}/configmaps", NAME)
        assert op.carried_on.is_set(), "the bring-up was meant to lose its first cancel"
        assert op.gone_calls == 1
    finally:
        await cancel(worker.provision, worker.finalize)


async def test_a_teardown_that_fails_is_requeued_until_the_finalizer_goes(api: Kube) -> None:
    state = SandboxState()
    op = Standin(api, state, gone_fails=2)
    worker = Worker(latest={})
    try:
        obj = await deleting(api)
        async with asyncio.timeout(DEADLINE):
            # Before: the teardown task died on the first error and, being recorded,
            # no later event started another: the finalizer stayed for good.
            await op.reconcile(KEY, worker, obj)
            await api.wait_gone(f"/api/v1/namespaces/{NS}/configmaps", NAME)
        assert op.gone_calls == 3
        failures = [e.event for e in state.timeline if e.event.startswith("teardown failed")]
        assert len(failures) == 2, state.timeline
    finally:
        await cancel(worker.provision, worker.finalize)


@pytest.mark.skipif(
    sys.version_info >= (3, 12), reason="asyncio.wait_for keeps a cancel since Python 3.12"
)
async def test_cancel_ends_a_task_whose_wait_for_dropped_it() -> None:
    # The race itself, made exact: what wait_for waits on completes, and the cancel lands
    # before the waiting task has been woken for it. wait_for returns the result, the
    # cancel is gone, and the task goes on.
    ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    waiting = asyncio.Event()
    carried_on = asyncio.Event()

    async def bring_up() -> None:
        waiting.set()
        await asyncio.wait_for(ready, 3600)
        carried_on.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(bring_up())
    await waiting.wait()
    ready.set_result(None)
    async with asyncio.timeout(DEADLINE):
        await cancel(task)  # before: returned only when the task ended, so never
    assert task.cancelled()
    assert carried_on.is_set(), "the first cancel was meant to be lost"


async def test_a_delay_keeps_a_cancel_that_lands_as_the_timeline_changes() -> None:
    # Where a KAITO bring-up sits when its Workspace is deleted: a delay, woken by every
    # entry any stand-in adds to the timeline. An entry, one turn of the loop for the
    # wake to run, then the cancel: wait_for lost it there, and the delay went on.
    state = SandboxState(Faults.model_validate({"delays": {"resource": 3600}}))
    delay = asyncio.create_task(state.wait_delay("resource", time.monotonic()))
    await asyncio.sleep(0)  # the delay now waits for a change
    state.record(NS, NAME, "something else happened")
    await asyncio.sleep(0)  # the change has woken what the delay waits on, not the delay
    delay.cancel()
    try:
        await asyncio.wait({delay}, timeout=DEADLINE)
        assert delay.cancelled(), "the cancel was lost: the delay went on waiting"
    finally:
        delay.cancel()
