"""Each fault knob makes the failure it names happen, visibly and only through real interfaces."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from _fixtures import (  # noqa: F401 - fixtures are used by name
    DEADLINE,
    MODEL,
    NAME,
    NS,
    PULL_REASONS,
    WS_COLLECTION,
    PodHistory,
    call,
    chat,
    condition,
    crash_loop_shape_problems,
    create_deployment,
    gone,
    install_kaito,
    kube_backend,
    make_sandbox,
    pod_phase,
    proxy_raw,
    pull_events_problems,
    pull_shape_problems,
    running_workspace,
    wait_for,
    waiting_reason,
)

from orchestrator.clients import Expectations
from orchestrator.clients._completion import assemble_stream, completion_violations
from orchestrator.flows import pull_is_definitive
from orchestrator.sandbox import Faults
from orchestrator.sandbox._kube import Kube
from orchestrator.sandbox.kaito import CRASH_LINE

pytestmark = pytest.mark.anyio
IMAGE = "ghcr.io/kaito-project/aikit/llama3.2:1b"
PODS = f"/api/v1/namespaces/{NS}/pods"


async def test_install_fails_answers_500_and_kaito_stays_uninstalled(make_sandbox) -> None:
    async with make_sandbox(faults=Faults(install_fails=True)) as (sandbox, api, kube):
        status, body = await call(api, "POST", "/api/installation/providers/kaito/install")
        assert status == 500
        assert body["error"]["statusCode"] == 500
        assert body["error"]["message"].startswith(
            'Installation failed at step "install-kaito-workspace": '
        )
        status, body = await call(api, "GET", "/api/installation/providers/kaito/status")
        assert body["installed"] is False and body["operatorRunning"] is False


#: The fault knobs' own endpoint and the backend's health route never reach Kubernetes: on a
#: test cluster the same requests get the same answers from the same code, after starting a
#: cluster that nothing reads (the sandbox's own API only).
SANDBOX_API_ONLY = pytest.mark.parametrize("kube_backend", ["kubeapi"], indirect=True)


@SANDBOX_API_ONLY
async def test_backend_errors_fail_the_next_requests_then_recover(make_sandbox) -> None:
    async with make_sandbox() as (sandbox, api, kube):
        status, body = await call(api, "POST", "/_sandbox/faults", json={"backend_errors": 2})
        assert status == 200 and body["backend_errors"] == 2
        for _ in range(2):
            status, body = await call(api, "GET", "/api/health")
            assert (status, body) == (
                503,
                {"error": {"message": "Service Unavailable", "statusCode": 503}},
            )
        status, body = await call(api, "GET", "/api/health")
        assert status == 200 and body["status"] == "healthy"
        status, body = await call(api, "GET", "/_sandbox/faults")
        assert body["backend_errors"] == 0


@SANDBOX_API_ONLY
async def test_faults_endpoint_rejects_unknown_knobs(make_sandbox) -> None:
    async with make_sandbox() as (sandbox, api, kube):
        status, body = await call(api, "POST", "/_sandbox/faults", json={"inference": "banana"})
        assert status == 400
        status, body = await call(api, "POST", "/_sandbox/faults", json={"no_such_fault": True})
        assert status == 400
        status, body = await call(
            api, "POST", "/_sandbox/faults", json={"delays": {"resource": 1.5}}
        )
        assert (
            status == 200
            and body["delays"]["resource"] == 1.5
            and body["delays"]["pod_start"] == 0.3
        )


async def test_image_pull_error_leaves_the_pod_pending_and_names_the_image(make_sandbox) -> None:
    async with make_sandbox(faults=Faults(image_pull_error=True)) as (sandbox, api, kube):
        await install_kaito(api, kube)
        await create_deployment(api)
        await sandbox.state.wait_recorded(NAME, "pod ErrImagePull")
        pod = await kube.get(f"{PODS}/{NAME}-0")
        assert pod["status"]["phase"] == "Pending"
        assert pod["spec"]["containers"][0]["image"] == IMAGE
        events = await kube.get(
            f"/api/v1/namespaces/{NS}/events", {"fieldSelector": f"involvedObject.name={NAME}-0"}
        )
        assert any(IMAGE in e["message"] and e["type"] == "Warning" for e in events["items"])
        ws = await kube.get(f"{WS_COLLECTION}/{NAME}")
        assert condition(ws, "ResourceReady") == "True" and condition(ws, "InferenceReady") is None
        status, body = await call(api, "GET", f"/api/deployments/{NAME}?namespace={NS}")
        assert body["phase"] == "Pending" and body["replicas"]["ready"] == 0


async def test_an_image_pull_error_is_shown_as_a_kubelet_shows_it(make_sandbox) -> None:
    """On both backends (the test cluster's fake kubelet writes an annotated waiting reason
    with no message and no events): every version of the pod that shows a pull reason
    has the kubelet's shape, the pull fails (ErrImagePull) before it backs off
    (ImagePullBackOff), and the events are the kubelet's, in its words and order."""
    faults = Faults(image_pull_error=True, delays={"image_pull_backoff": 0.2})
    async with make_sandbox(faults=faults) as (sandbox, api, kube):
        await install_kaito(api, kube)
        query = {"fieldSelector": f"metadata.name={NAME}-0"}
        async with PodHistory(kube, PODS, query) as history:
            await create_deployment(api)
            await history.until(waiting_reason("ImagePullBackOff"))
            async with asyncio.timeout(DEADLINE):  # its events are written by then
                await sandbox.state.wait_recorded(NAME, "pod ImagePullBackOff")
        shown = [r for v in history.versions if (r := reason_of(v)) in PULL_REASONS]
        assert list(dict.fromkeys(shown)) == ["ErrImagePull", "ImagePullBackOff"], shown
        wrong = {
            v["metadata"]["resourceVersion"]: problems
            for v in history.versions
            if reason_of(v) in PULL_REASONS and (problems := pull_shape_problems(v))
        }
        assert not wrong, wrong
        pod = history.versions[-1]
        events = await kube.get(
            f"/api/v1/namespaces/{NS}/events", {"fieldSelector": f"involvedObject.name={NAME}-0"}
        )
        assert pull_events_problems(events["items"], pod, list(PULL_REASONS)) == []
        message = pod["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
        assert message == f'Back-off pulling image "{IMAGE}"'


async def test_a_rate_limited_pull_is_refused_until_lifted_then_the_pod_runs(
    make_sandbox,
) -> None:
    """The pull is refused with the registry's 429 (a definitive answer it is not), backs
    off, and once the fault is lifted the kubelet's next try pulls and the pod runs."""
    faults = Faults(image_pull_rate_limited=True, delays={"image_pull_backoff": 0.2})
    async with make_sandbox(faults=faults) as (sandbox, api, kube):
        await install_kaito(api, kube)
        query = {"fieldSelector": f"metadata.name={NAME}-0"}
        async with PodHistory(kube, PODS, query) as history:
            await create_deployment(api)
            async with asyncio.timeout(DEADLINE):
                await sandbox.state.wait_recorded(NAME, "pod ImagePullBackOff (rate limited)")
            sandbox.update_faults({"image_pull_rate_limited": False})
            async with asyncio.timeout(DEADLINE):
                await sandbox.state.wait_recorded(NAME, "pod Running")
        shown = [r for v in history.versions if (r := reason_of(v)) in PULL_REASONS]
        assert list(dict.fromkeys(shown)) == ["ErrImagePull", "ImagePullBackOff"], shown
        refused = next(v for v in history.versions if reason_of(v) == "ErrImagePull")
        message = refused["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
        assert "429 Too Many Requests" in message and "toomanyrequests" in message, message
        assert not pull_is_definitive(message)
        pod = await kube.get(f"{PODS}/{NAME}-0")
        assert pod["status"]["phase"] == "Running"


def reason_of(pod: dict) -> str | None:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return (
        ((statuses[0].get("state") or {}).get("waiting") or {}).get("reason") if statuses else None
    )


async def test_crash_loop_shows_the_waiting_reason_restarts_and_the_crash_log(make_sandbox) -> None:
    async with make_sandbox(faults=Faults(crash_loop=True)) as (sandbox, api, kube):
        await install_kaito(api, kube)
        await create_deployment(api)
        await wait_for(kube, PODS, f"{NAME}-0", waiting_reason("CrashLoopBackOff"))
        await sandbox.state.wait_recorded(NAME, "pod CrashLoopBackOff")
        pod = await kube.get(f"{PODS}/{NAME}-0")
        assert pod["metadata"]["annotations"]["fake-kubelet/log"] == CRASH_LINE
        status, body = await call(api, "GET", f"/api/deployments/{NAME}/pods?namespace={NS}")
        # A kubelet keeps a crash-looping pod Running (its container has run, and is
        # restarting); only its readiness and the waiting reason tell.
        assert body["pods"][0]["phase"] == "Running" and body["pods"][0]["ready"] is False
        assert body["pods"][0]["restarts"] > 0
        previous = await kube.text(f"{PODS}/{NAME}-0/log", {"previous": True})
        assert CRASH_LINE in previous
        events = await kube.get(
            f"/api/v1/namespaces/{NS}/events", {"fieldSelector": f"involvedObject.name={NAME}-0"}
        )
        assert any(e["reason"] == "BackOff" for e in events["items"])


def _restarts(pod: dict) -> int:
    return sum(s.get("restartCount", 0) for s in pod["status"].get("containerStatuses") or [])


async def test_a_crash_loop_is_never_shown_before_its_restarts(make_sandbox) -> None:
    """A kubelet puts a container in CrashLoopBackOff only after it has restarted, and it
    writes the waiting reason, the restart count and the last termination in one status
    update, with the pod Running: no version of the pod, not even for a moment, may show
    the back-off in another shape. A fast waiter collects its diagnostics from whatever
    version it sees first."""
    async with make_sandbox(faults=Faults(crash_loop=True)) as (sandbox, api, kube):
        await install_kaito(api, kube)
        async with PodHistory(kube, PODS, {"fieldSelector": f"metadata.name={NAME}-0"}) as history:
            await create_deployment(api)
            crashed = await history.until(waiting_reason("CrashLoopBackOff"))
            await sandbox.state.wait_recorded(NAME, "pod CrashLoopBackOff")
            current = await kube.get(f"{PODS}/{NAME}-0")
        shown = [
            (v["metadata"]["resourceVersion"], _restarts(v))
            for v in history.versions
            if waiting_reason("CrashLoopBackOff")(v)
        ]
        assert all(restarts > 0 for _, restarts in shown), shown
        wrong = {
            v["metadata"]["resourceVersion"]: problems
            for v in history.versions
            if waiting_reason("CrashLoopBackOff")(v) and (problems := crash_loop_shape_problems(v))
        }
        assert not wrong, wrong
        assert _restarts(crashed) == 3 and crashed["status"]["containerStatuses"][0]["lastState"]
        # The kubelet left the crash-loop state alone: it is still what the pod shows.
        assert waiting_reason("CrashLoopBackOff")(current) and _restarts(current) == 3


async def test_stuck_delete_keeps_the_finalizer_until_lifted(make_sandbox) -> None:
    # image_pull_error keeps this test free of model servers; deletion does not care.
    async with make_sandbox(faults=Faults(stuck_delete=True, image_pull_error=True)) as (
        sandbox,
        api,
        kube,
    ):
        await install_kaito(api, kube)
        await create_deployment(api)
        await sandbox.state.wait_recorded(NAME, "pod ErrImagePull")
        status, body = await call(api, "DELETE", f"/api/deployments/{NAME}?namespace={NS}")
        assert status == 200
        await sandbox.state.wait_recorded(NAME, "finalizer kept (stuck_delete)")
        ws = await kube.get(f"{WS_COLLECTION}/{NAME}")
        assert ws["metadata"]["deletionTimestamp"]
        assert "workspace.finalizer.kaito.sh" in ws["metadata"]["finalizers"]
        status, body = await call(api, "GET", f"/api/deployments/{NAME}?namespace={NS}")
        assert status == 200 and body["phase"] == "Pending"
        await kube.get(f"{PODS}/{NAME}-0")  # children stay while the finalizer is held

        status, body = await call(api, "POST", "/_sandbox/faults", json={"stuck_delete": False})
        assert status == 200
        await wait_for(kube, WS_COLLECTION, NAME, gone)
        await wait_for(kube, PODS, f"{NAME}-0", gone)


async def test_never_ready_withholds_inference_ready(make_sandbox) -> None:
    async with make_sandbox(faults=Faults(never_ready=True)) as (sandbox, api, kube):
        await install_kaito(api, kube)
        await create_deployment(api)
        await sandbox.state.wait_recorded(NAME, "InferenceReady withheld (never_ready)")
        await wait_for(kube, PODS, f"{NAME}-0", pod_phase("Running"))
        ws = await kube.get(f"{WS_COLLECTION}/{NAME}")
        assert condition(ws, "ResourceReady") == "True"
        assert (
            condition(ws, "InferenceReady") is None and condition(ws, "WorkspaceSucceeded") is None
        )
        status, body = await call(api, "GET", f"/api/deployments/{NAME}?namespace={NS}")
        assert body["phase"] == "Pending"

        sandbox.update_faults({"never_ready": False})
        await wait_for(kube, WS_COLLECTION, NAME, running_workspace)


#: The real model, in its own template, against the quality gate, on the sandbox's own API;
#: on a test cluster, what its service proxy adds is the path of the broken completions,
#: which a stub model's answers take as well (the real model through that proxy is
#: tests/sandbox/test_kaito_controller.py's subject).
@pytest.mark.parametrize(
    "kube_backend", [pytest.param("kubeapi", marks=pytest.mark.model), "testcluster"], indirect=True
)
async def test_inference_faults_break_the_completion(make_sandbox) -> None:
    async with make_sandbox() as (sandbox, api, kube):
        await install_kaito(api, kube)
        await create_deployment(api)
        await wait_for(kube, WS_COLLECTION, NAME, running_workspace)

        good = await chat(kube)
        assert (
            good["object"] == "chat.completion"
            and good["choices"][0]["message"]["role"] == "assistant"
        )
        # The real model, in its own template, passes the whole quality gate.
        assert gate(good, max_tokens=8) == []

        sandbox.update_faults({"inference": "wrong_object"})
        assert (await chat(kube))["object"] == "text_completion"

        sandbox.update_faults({"inference": "empty"})
        assert all(c["message"]["content"] == "" for c in (await chat(kube))["choices"])
        assert gate(await chat(kube), max_tokens=8) == ["empty-content"]

        # Each fault a real deployment can have fails exactly its own check.
        sandbox.update_faults({"inference": "wrong_chat_template"})
        assert gate(await chat(kube), max_tokens=8) == ["template-tokens"]
        assert gate(await streamed_chat(kube), max_tokens=8) == ["template-tokens"]
        sandbox.update_faults({"inference": "wrong_model"})
        assert gate(await chat(kube), max_tokens=8) == ["model-name"]
        assert gate(await streamed_chat(kube), max_tokens=8) == ["model-name"]

        sandbox.update_faults({"inference": "malformed"})
        bad = await chat(kube)
        assert bad["choices"][0]["message"]["role"] == "user"
        assert bad["choices"][0]["finish_reason"] == "banana"
        usage = bad["usage"]
        assert usage["total_tokens"] != usage["prompt_tokens"] + usage["completion_tokens"]

        sandbox.update_faults({"inference": "wrong_object"})
        status, raw = await proxy_raw(
            kube,
            "v1/chat/completions",
            {
                "model": MODEL,
                "stream": True,
                "max_tokens": 4,
                "messages": [{"role": "user", "content": "Hi"}],
            },
        )
        chunks = [
            json.loads(line[6:])
            for line in raw.splitlines()
            if line.startswith(b"data: ") and line != b"data: [DONE]"
        ]
        assert chunks and all(c["object"] == "text_completion" for c in chunks)


def gate(body: Any, max_tokens: int) -> list[str]:
    """The names of the quality checks ``body`` fails, as the Inference phase judges it."""
    return [v.check for v in completion_violations(body, Expectations(MODEL, max_tokens))]


async def streamed_chat(kube: Kube) -> dict[str, Any]:
    """A streamed completion, put back together into the completion it stands for."""
    body = {"model": MODEL, "stream": True, "max_tokens": 8}
    body["messages"] = [{"role": "user", "content": "Say hello."}]
    status, raw = await proxy_raw(kube, "v1/chat/completions", body)
    assert status == 200, raw
    chunks = [
        json.loads(line[6:])
        for line in raw.splitlines()
        if line.startswith(b"data: ") and line != b"data: [DONE]"
    ]
    assembled = assemble_stream(chunks)
    assert assembled.violations == []
    return assembled.body


async def test_model_loading_answers_503_until_the_time_is_up(make_sandbox) -> None:
    async with make_sandbox(faults=Faults(model_loading_seconds=600)) as (sandbox, api, kube):
        await install_kaito(api, kube)
        await create_deployment(api)
        await wait_for(kube, WS_COLLECTION, NAME, running_workspace)
        body = {"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]}
        status, raw = await proxy_raw(kube, "v1/chat/completions", body)
        assert status == 503
        assert json.loads(raw) == {"error": {"message": "Loading model", "code": 503}}
        sandbox.update_faults({"model_loading_seconds": 0})
        status, raw = await proxy_raw(kube, "v1/chat/completions", body)
        assert status == 200 and json.loads(raw)["object"] == "chat.completion"
