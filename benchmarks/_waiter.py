"""A waiting process for the reaction benchmark: the orchestrator's waiter, or a 2 s poll.

``python benchmarks/_waiter.py KUBECONFIG NAMESPACE`` first prints ``loop NAME`` (the event
loop it runs on, chosen as ``orchestrator run`` chooses it: ``ORCHESTRATOR_EVENT_LOOP``),
then reads one JSON request per line
(``{"method": "orchestrator" | "poll", "kind": "workspace" | "pod", "name": ...,
"confirm": "cache" | "quorum"}``), waits
until that object is ready, and prints ``done NAME`` at once. It lives for the whole
benchmark, so that Python's start-up is not part of any reaction (the start-up is
reported on its own); ``kubectl wait`` is a Go binary that starts in a few milliseconds
and is started per trial, as users run it.

The orchestrator's waiter is the flows' own public machinery (``orchestrator.flows``'
``wait_for`` and ``WatchSpec``, ``orchestrator.clients``' ``WatchHub`` and ``KubeClient``),
nothing the flows do not use: a subscription to the run's shared watch hub (one stream
per resource type and namespace), woken by events seen through ``inspect``, and a
confirming read of the object before it returns: a watch cache is a hint, not the truth.
The read (``"confirm": "cache"``, the default) asks for a state not older than the event's
resourceVersion, which the API server answers from its own watch cache instead of a quorum
read from etcd, as the flows' confirming reads after an event do; ``"quorum"`` asks for the
current state (a plain GET, read from etcd), the one read of the two that is linearizable. The heap is settled as ``orchestrator run`` settles
it (imports frozen out of the collector's sight), and the loop is started by the same
function.

For the orchestrator's waiter the answer also gives three moments (``time.monotonic()``,
one clock for every process on the machine): when the last event before the answer was
handed to the waiter, and when the confirming read that answered began and ended. The
benchmark splits the reaction there: what the watch delivers, what waking the waiter
costs, what the read costs (our client's work and the server's round trip together, as
a flow pays them), and the return.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import time
from typing import Any

import anyio

from orchestrator._loop import loop_name
from orchestrator._loop import run as run_loop
from orchestrator.clients import PODS, KubeClient, Resource, WatchEvent, WatchHub
from orchestrator.flows import WatchSpec, wait_for

WORKSPACES = Resource("kaito.sh", "v1beta1", "workspaces")
POLL_INTERVAL = 2.0  # KAITO's own e2e tests poll every 2 s
RECHECK = 30.0  # the flow's safety re-check while watching


def ready(kind: str, obj: dict[str, Any]) -> bool:
    status = obj.get("status") or {}
    if kind == "pod":
        return status.get("phase") == "Running"
    return any(
        c.get("type") == "InferenceReady" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )


async def serve(kubeconfig: str, namespace: str) -> None:
    sys.stdout.write(f"loop {loop_name(asyncio.get_running_loop())}\n")
    sys.stdout.flush()
    kube = await KubeClient.from_kubeconfig(kubeconfig)
    # Requests are read on the loop, not by a worker thread: right after a "done" line a
    # thread woken to read the next request competed for the CPU with the benchmark that
    # was reading the answer (the line reached it 0.08-0.1 ms later at p50, measured
    # side by side in four waiter processes); the reaction would have counted that.
    loop = asyncio.get_running_loop()
    requests = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(requests), sys.stdin)
    try:
        async with WatchHub(kube) as hub:
            while line := await requests.readline():
                if line.strip():
                    await one(kube, hub, namespace, json.loads(line))
    finally:
        await kube.aclose()


async def one(kube: KubeClient, hub: WatchHub, namespace: str, ask: dict[str, str]) -> None:
    kind, name = ask["kind"], ask["name"]
    resource = PODS if kind == "pod" else WORKSPACES
    seen: list[str] = []  # the resourceVersions the events showed
    handed: list[float] = []  # when each event reached this waiter
    reads: list[tuple[float, float]] = []  # when each confirming read began and ended

    def inspect(event: WatchEvent) -> None:
        handed.append(time.monotonic())
        version = (event.object.get("metadata") or {}).get("resourceVersion")
        if isinstance(version, str):
            seen.append(version)

    #: Only the cache read names a version: a plain GET is the current state.
    cached = ask.get("confirm", "cache") == "cache"

    async def check() -> bool | None:
        # The confirming read: the API server's answer, at least as new as the last event
        # (cache), or the current state (quorum).
        began = time.monotonic()
        version = seen[-1] if seen and cached else None
        obj = await kube.get(resource, name, namespace, not_older_than=version)
        reads.append((began, time.monotonic()))
        return True if ready(kind, obj) else None

    if ask["method"] == "orchestrator":
        await wait_for(
            check,
            kube=kube,
            hub=hub,
            recheck=RECHECK,
            inspect=inspect,
            watches=[WatchSpec(resource, namespace, field_selector=f"metadata.name={name}")],
        )
    else:
        while await check() is None:
            await anyio.sleep(POLL_INTERVAL)
    moments = ""
    if handed and ask["method"] == "orchestrator":
        moments = f" {handed[-1]!r} {reads[-1][0]!r} {reads[-1][1]!r}"
    sys.stdout.write(f"done {name}{moments}\n")
    sys.stdout.flush()


if __name__ == "__main__":
    KubeClient.preload()
    gc.freeze()
    run_loop(serve(sys.argv[1], sys.argv[2]))
