"""The public toolkit's pieces, one by one: what a flow of one's own builds on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest
from flow_fakes import FakeBackend, FakeCluster, kaito_like

from orchestrator.clients import (
    EVENTS,
    PODS,
    NotFound,
    Resource,
    ResponseFormatError,
    ServerError,
    Unauthorized,
)
from orchestrator.clients._retry import heard
from orchestrator.engine import PhaseContext, PhaseFailed
from orchestrator.flows import (
    OncePerRun,
    PullErrors,
    call_backend,
    collect_diagnostics,
    is_pod,
    pod_problem,
    pod_ready,
    pull_is_definitive,
    side_by_side,
)
from orchestrator.flows._calls import peer_failures_named

pytestmark = pytest.mark.anyio


def pod(
    *,
    phase: str = "Running",
    waiting: str | None = None,
    ready: bool = True,
    deleting: bool = False,
    **status: Any,
) -> dict[str, Any]:
    state = {"waiting": {"reason": waiting, "message": "why"}} if waiting else {"running": {}}
    meta: dict[str, Any] = {"name": "p"}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {
        "kind": "Pod",
        "metadata": meta,
        "spec": {"containers": [{"name": "c", "image": "img:1"}]},
        "status": {
            "phase": phase,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "containerStatuses": [{"name": "c", "state": state, "ready": ready}],
            **status,
        },
    }


def test_pod_problem_names_the_container_reason_and_image() -> None:
    pulling = pod(waiting="ErrImagePull", ready=False)
    pulling["status"]["containerStatuses"][0]["state"]["waiting"]["message"] = NOT_FOUND
    assert pod_problem(pulling) == (
        f"pod p container c: ErrImagePull (image img:1): {NOT_FOUND}; check that the image "
        "exists and that the nodes can pull it (a private registry needs an imagePullSecret); "
        "the pod's events, in the diagnostics, hold the registry's answer"
    )


# A failed pull's waiting message, as containerd words it to the kubelet.
REF = "docker.io/library/x:y"
NOT_FOUND = (
    f'rpc error: code = NotFound desc = failed to pull and unpack image "{REF}": '
    f'failed to resolve reference "{REF}": {REF}: not found'
)
DEFINITIVE = [
    NOT_FOUND,
    f'rpc error: code = Unknown desc = failed to pull and unpack image "{REF}": failed to '
    f'resolve reference "{REF}": unexpected status from HEAD request to '
    "https://registry-1.docker.io/v2/library/x/manifests/y: 401 Unauthorized",
    f'rpc error: code = Unknown desc = failed to pull and unpack image "{REF}": failed to '
    f'resolve reference "{REF}": pull access denied, repository does not exist or may '
    "require authorization: server message: insufficient_scope: authorization failed",
    f'rpc error: code = NotFound desc = failed to pull and unpack image "{REF}": failed to '
    f'resolve reference "{REF}": ghcr.io/o/x:y: manifest unknown',
    f'rpc error: code = Unknown desc = failed to pull and unpack image "{REF}": failed to '
    "fetch anonymous token: unexpected status: 403 Forbidden",
    'couldn\'t parse image reference "X:Y": invalid reference format: repository name '
    "must be lowercase",
]
TRANSIENT = [
    f'rpc error: code = Unknown desc = failed to pull and unpack image "{REF}": failed to '
    f"copy: httpReadSeeker: failed open: unexpected status code https://registry-1.docker.io"
    "/v2/library/x/manifests/sha256:0f1e: 429 Too Many Requests - Server message: "
    "toomanyrequests: You have reached your unauthenticated pull rate limit. "
    "https://www.docker.com/increase-rate-limit",
    f'rpc error: code = Unknown desc = failed to pull and unpack image "{REF}": failed to '
    f'resolve reference "{REF}": failed to do request: Head '
    '"https://registry-1.docker.io/v2/library/x/manifests/y": dial tcp 54.236.113.205:443: '
    "i/o timeout",
    f'rpc error: code = Unknown desc = failed to pull and unpack image "{REF}": failed to '
    f'resolve reference "{REF}": unexpected status from HEAD request to '
    "https://registry-1.docker.io/v2/library/x/manifests/y: 503 Service Unavailable",
    f'rpc error: code = Unknown desc = failed to pull and unpack image "{REF}": failed to '
    "copy: read tcp 10.0.0.2:51234->104.18.124.25:443: read: connection reset by peer",
    f'rpc error: code = Unknown desc = failed to pull and unpack image "{REF}": failed to '
    f'resolve reference "{REF}": failed to do request: Head '
    '"https://registry-1.docker.io/v2/library/x/manifests/y": net/http: TLS handshake timeout',
]


#: An image whose name and tag hold a definitive answer's words.
WORDY = "ghcr.io/denied/unauthorized-app:forbidden"


@pytest.mark.parametrize(
    "answer",
    [
        f'rpc error: code = Unknown desc = failed to pull and unpack image "{WORDY}": failed '
        f"to copy: httpReadSeeker: failed open: unexpected status code https://ghcr.io/v2/"
        "denied/unauthorized-app/manifests/forbidden: 429 Too Many Requests",
        f'rpc error: code = Unknown desc = failed to pull and unpack image "{WORDY}": failed '
        f"to resolve reference {WORDY}: i/o timeout",
        'rpc error: code = Unknown desc = failed to pull and unpack image "denied:1": failed '
        "to copy: read: connection reset by peer",
    ],
)
def test_an_image_name_is_not_the_registrys_answer(answer: str) -> None:
    # The words of an image's name or tag, quoted in the error, say nothing about
    # whether a retry can succeed.
    assert not pull_is_definitive(answer)


@pytest.mark.parametrize("answer", DEFINITIVE)
def test_a_definitive_registry_answer_ends_the_wait(answer: str) -> None:
    assert pull_is_definitive(answer)
    pulling = pod(waiting="ErrImagePull", ready=False)
    pulling["status"]["containerStatuses"][0]["state"]["waiting"]["message"] = answer
    assert answer in (pod_problem(pulling) or "")


@pytest.mark.parametrize("answer", TRANSIENT)
def test_a_pull_failure_the_kubelet_retries_is_waited_out_and_noted_once(answer: str) -> None:
    assert not pull_is_definitive(answer)
    pulls = PullErrors()
    for reason, message in [
        ("ErrImagePull", answer),
        ("ImagePullBackOff", 'Back-off pulling image "img:1"'),
        ("ErrImagePull", answer),
    ]:
        pulling = pod(waiting=reason, ready=False)
        pulling["status"]["containerStatuses"][0]["state"]["waiting"]["message"] = message
        assert pod_problem(pulling, pulls=pulls) is None
    assert pulls.new_notes() == [
        f"pod p cannot pull image img:1 yet (the kubelet retries): {answer}"
    ]
    assert pulls.new_notes() == []
    assert pulls.retrying() == f"pod p cannot pull image img:1 yet (the kubelet retries): {answer}"
    # The pull then succeeds: nothing is left to blame a timeout on.
    assert pod_problem(pod(waiting="ContainerCreating", ready=False), pulls=pulls) is None
    assert pulls.retrying() is None


def test_a_back_off_is_decided_by_the_pull_error_before_it() -> None:
    pulls = PullErrors()
    back_off = pod(waiting="ImagePullBackOff", ready=False)
    back_off["status"]["containerStatuses"][0]["state"]["waiting"]["message"] = (
        'Back-off pulling image "img:1"'
    )
    # No pull error seen yet (the wait began during a back-off): the kubelet will try
    # again, and its next ErrImagePull decides.
    assert pod_problem(back_off, pulls=pulls) is None
    assert pulls.retrying() == "pod p cannot pull image img:1 yet (the kubelet retries)"
    assert pulls.new_notes() == []
    pulling = pod(waiting="ErrImagePull", ready=False)
    pulling["status"]["containerStatuses"][0]["state"]["waiting"]["message"] = TRANSIENT[0]
    assert pod_problem(pulling, pulls=pulls) is None
    assert pod_problem(back_off, pulls=pulls) is None
    pulling["status"]["containerStatuses"][0]["state"]["waiting"]["message"] = NOT_FOUND
    assert pod_problem(pulling, pulls=pulls) is not None
    problem = pod_problem(back_off, pulls=pulls)
    assert problem is not None and problem.startswith(
        f"pod p container c: ImagePullBackOff (image img:1): {NOT_FOUND}; "
    )
    assert pulls.new_notes() == [
        f"pod p cannot pull image img:1 yet (the kubelet retries): {TRANSIENT[0]}"
    ]


def test_pod_problem_waits_on_a_reason_that_passes_and_on_a_pod_being_deleted() -> None:
    assert pod_problem(pod(waiting="ContainerCreating", ready=False)) is None
    assert pod_problem(pod(waiting="CrashLoopBackOff", deleting=True)) is None


def test_a_crash_loop_in_the_shape_a_kubelet_writes_is_a_problem_and_not_ready() -> None:
    """A kubelet keeps a crash-looping pod Running (its container ran and is restarting):
    the waiting reason decides, whatever the phase, and the last exit code is named."""
    looping = pod(waiting="CrashLoopBackOff", ready=False)
    looping["status"]["containerStatuses"][0].update(
        restartCount=4,
        started=False,
        containerID="containerd://0f1e",
        lastState={"terminated": {"exitCode": 1, "reason": "Error", "containerID": "x"}},
    )
    looping["status"]["containerStatuses"][0]["state"]["waiting"]["message"] = (
        "back-off 1m20s restarting failed container=c pod=p_ns(uid)"
    )
    assert looping["status"]["phase"] == "Running"
    assert pod_problem(looping) == (
        "pod p container c: CrashLoopBackOff (image img:1): back-off 1m20s restarting failed "
        "container=c pod=p_ns(uid); last exit code 1; the container keeps exiting: its last "
        "log lines are in the diagnostics"
    )
    assert not pod_ready(looping)


def test_pod_problem_takes_a_profiles_own_fatal_reasons() -> None:
    assert pod_problem(pod(waiting="ContainerCreating"), {"ContainerCreating"}) is not None
    assert pod_problem(pod(waiting="ErrImagePull"), {"ContainerCreating"}) is None


def test_pod_problem_reports_a_failed_pod_with_exit_codes() -> None:
    failed = pod(phase="Failed", reason="Evicted")
    failed["status"]["containerStatuses"][0]["state"] = {"terminated": {"exitCode": 137}}
    assert pod_problem(failed) == "pod p Failed: Evicted (c exit code 137)"


def test_pod_ready_needs_running_ready_and_not_deleting() -> None:
    assert pod_ready(pod())
    assert not pod_ready(pod(ready=False))
    assert not pod_ready(pod(phase="Pending"))
    assert not pod_ready(pod(deleting=True))


def test_is_pod_tells_a_pod_from_a_workload_with_or_without_kind() -> None:
    assert is_pod(pod())
    assert is_pod({"spec": {"containers": []}})
    assert not is_pod({"kind": "Workspace", "inference": {}})
    assert not is_pod({"metadata": {"name": "ws"}})


async def fails(exc: Exception) -> None:
    raise exc


async def test_call_backend_turns_answers_that_end_a_phase_into_reasons() -> None:
    with pytest.raises(PhaseFailed, match="check the bearer token"):
        await call_backend(fails(Unauthorized(401, "no", method="GET", path="/x")))
    # The backend's auth answers 401 only: a 403 is Kubernetes (RBAC) passed on, or a
    # proxy, and blaming the token would send a person to the wrong place.
    forbidden = Unauthorized(
        403,
        'Failed to create deployment: workspaces.kaito.sh is forbidden: User "system:'
        'serviceaccount:kubefoundry-system:kubefoundry" cannot create resource "workspaces"',
        method="POST",
        path="/api/deployments",
    )
    with pytest.raises(PhaseFailed) as refused:
        await call_backend(fails(forbidden))
    assert "403" in refused.value.reason and "RBAC" in refused.value.reason
    assert "bearer token" not in refused.value.reason
    with pytest.raises(PhaseFailed, match="bad shape"):
        await call_backend(fails(ResponseFormatError("bad shape", [])))
    with pytest.raises(NotFound):  # a 404 is often an answer ("it is gone")
        await call_backend(fails(NotFound(404, "gone", method="GET", path="/x")))
    with pytest.raises(PhaseFailed, match="GET /x answered 404: gone"):
        await call_backend(
            fails(NotFound(404, "gone", method="GET", path="/x")), not_found_fails=True
        )


async def test_side_by_side_keeps_each_outcome_apart() -> None:
    async def value() -> int:
        return 7

    ok, broken = await side_by_side(value(), fails(ValueError("one of two")))
    assert ok.result() == 7
    with pytest.raises(ValueError, match="one of two"):
        broken.result()


async def test_once_per_run_shares_a_success_never_a_failure() -> None:
    gate = OncePerRun()
    calls: list[str] = []

    async def work(who: str, ok: bool) -> str:
        calls.append(who)
        if not ok:
            raise RuntimeError("install failed")
        return who

    with pytest.raises(RuntimeError):
        await gate.once("install:x", "a", lambda: work("a", False))
    proofs = []

    async def take(who: str) -> None:
        proofs.append(await gate.once("install:x", who, lambda: work(who, True)))

    async with anyio.create_task_group() as tg:
        tg.start_soon(take, "b")
        tg.start_soon(take, "c")
    assert len(calls) == 2  # a failed, then exactly one more did the work
    assert [p.here for p in proofs] == [True, False]
    assert proofs[1].by == proofs[0].by and proofs[1].value == proofs[0].by
    assert await gate.once("install:y", "d", lambda: work("d", True)) != proofs[0]


RAYSERVICES = Resource("ray.io", "v1", "rayservices")


async def diagnose(backend: FakeBackend, out: Path, namespace: str, name: str) -> list[str]:
    """Diagnostics of a RayService deployment from the fakes; the lines they logged."""
    lines: list[str] = []
    api = backend.client()
    try:
        await collect_diagnostics(
            out,
            kube=backend.cluster,  # type: ignore[arg-type]
            api=api,
            namespace=namespace,
            deployment=name,
            workload=RAYSERVICES,
            workload_kind="RayService",
            log=lines.append,
        )
    finally:
        await api.aclose()
    return lines


async def test_diagnostics_are_written_for_any_workload_resource(tmp_path: Path) -> None:
    cluster = FakeCluster()
    backend = FakeBackend(cluster, kaito_like(RAYSERVICES, "RayService"))
    backend._make("llm", "ray")
    lines = await diagnose(backend, tmp_path, "ray", "llm")
    assert json.loads((tmp_path / "rayservice.json").read_text())["kind"] == "RayService"
    assert "llm-0" in (tmp_path / "describe-pods.txt").read_text()
    assert (tmp_path / "logs").is_dir() and cluster.of(PODS)
    assert lines[-1] == f"diagnostics written to {tmp_path}"


async def test_diagnostics_take_the_crashed_instance_of_each_container_init_ones_too(
    tmp_path: Path,
) -> None:
    """A container waiting to restart has no running instance: its log is asked for as
    ``previous`` (the one that exited), which a kubelet, the sandbox and the test cluster
    all serve, and its current log names that file. Init containers are read alike."""
    cluster = FakeCluster()
    asked: list[tuple[str, str | None, bool]] = []

    async def pod_log(name: str, namespace: str, **kw: Any) -> str:
        asked.append((name, kw.get("container"), bool(kw.get("previous"))))
        return f"last lines of {kw.get('container')}\n"

    cluster.pod_log = pod_log  # type: ignore[method-assign]
    crashed = {
        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        "lastState": {"terminated": {"exitCode": 1, "containerID": "c://1"}},
        "restartCount": 3,
    }
    cluster.put(
        PODS,
        {
            "kind": "Pod",
            "metadata": {"name": "p-0", "namespace": "ns"},
            "status": {
                "phase": "Pending",
                "initContainerStatuses": [{"name": "fetch", **crashed}],
                "containerStatuses": [
                    {"name": "model", "state": {"waiting": {"reason": "PodInitializing"}}}
                ],
            },
        },
    )
    backend = FakeBackend(cluster, kaito_like(RAYSERVICES, "RayService"))
    await diagnose(backend, tmp_path, "ns", "p")
    logs = tmp_path / "logs"
    assert asked == [("p-0", "fetch", True)]
    assert (logs / "p-0_fetch.previous.log").read_text() == "last lines of fetch\n"
    assert "p-0_fetch.previous.log" in (logs / "p-0_fetch.log").read_text()
    assert "none has run yet" in (logs / "p-0_model.log").read_text()
    assert not (tmp_path / "errors.txt").exists()


async def test_a_failing_route_stays_named_until_it_answers_again() -> None:
    """The phase is told what a route keeps failing with; another route's success (a
    Kubernetes read between two backend calls) leaves it named, its own clears it."""
    seen: list[str | None] = []

    async def body(ctx: PhaseContext) -> None:
        heard("GET /api/x", ServerError(503, "restarting", method="GET", path="/api/x"))
        seen.append(ctx.phase.failing)
        heard("GET /api/v1/pods", None)
        seen.append(ctx.phase.failing)
        heard("GET /api/x", None)
        seen.append(ctx.phase.failing)

    await peer_failures_named(body)(PhaseContext.detached())
    named, after_other, after_own = seen
    assert named is not None and named.startswith("GET /api/x kept failing: ")
    assert "restarting" in named and after_other == named and after_own is None


async def test_diagnostics_list_events_of_one_second_in_the_order_they_were_written(
    tmp_path: Path,
) -> None:
    """A kubelet's events carry whole seconds, and a list comes in name order (random for
    generated names): a failed pull's three events, written in one second, are told apart
    by their resourceVersions, in events.txt and in the pod's description alike."""
    cluster = FakeCluster()
    image = "ghcr.io/x/model:1"
    cluster.put(
        PODS,
        {
            "kind": "Pod",
            "metadata": {"name": "p-0", "namespace": "ns"},
            "status": {"phase": "Pending", "containerStatuses": []},
        },
    )
    written = [
        ("Normal", "Pulling", f'Pulling image "{image}"'),
        ("Warning", "Failed", f'Failed to pull image "{image}": rpc error: not found'),
        ("Warning", "Failed", "Error: ErrImagePull"),
    ]
    # Listed in name order, as an API server lists them: the last written first.
    for version, name, (type_, reason, message) in reversed(
        list(zip(("9", "10", "11"), ("p-0.z", "p-0.b", "p-0.a"), written, strict=True))
    ):
        cluster.put(
            EVENTS,
            {
                "metadata": {"name": name, "namespace": "ns", "resourceVersion": version},
                "involvedObject": {"kind": "Pod", "name": "p-0", "namespace": "ns"},
                "type": type_,
                "reason": reason,
                "message": message,
                "lastTimestamp": "2026-11-30T10:00:00Z",
            },
        )
    backend = FakeBackend(cluster, kaito_like(RAYSERVICES, "RayService"))
    await diagnose(backend, tmp_path, "ns", "p")
    for file in ("events.txt", "describe-pods.txt"):
        text = (tmp_path / file).read_text()
        at = [text.index(message) for _, _, message in written]
        assert at == sorted(at), text
