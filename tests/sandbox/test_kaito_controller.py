"""The KAITO stand-in drives a Workspace to Running, serves a real model, and cleans up on delete."""

from __future__ import annotations

import json

import pytest
from _fixtures import (  # noqa: F401 - fixtures are used by name
    NAME,
    NS,
    WS_COLLECTION,
    call,
    chat,
    create_deployment,
    gone,
    install_kaito,
    kube_backend,
    make_sandbox,
    pod_phase,
    proxy_raw,
    running_workspace,
    wait_for,
)

from orchestrator.sandbox.kaito import FINALIZER

pytestmark = pytest.mark.anyio


@pytest.mark.model
async def test_workspace_runs_and_the_model_answers_through_the_service_proxy(make_sandbox) -> None:
    async with make_sandbox() as (sandbox, api, kube):
        await install_kaito(api, kube)
        await create_deployment(api)

        ws = await wait_for(kube, WS_COLLECTION, NAME, running_workspace)
        assert FINALIZER in ws["metadata"]["finalizers"]
        assert {"ResourceReady", "InferenceReady", "WorkspaceSucceeded"} <= {
            c["type"] for c in ws["status"]["conditions"]
        }

        status, deployment = await call(api, "GET", f"/api/deployments/{NAME}?namespace={NS}")
        assert status == 200
        assert deployment["phase"] == "Running"
        assert deployment["replicas"] == {"desired": 1, "ready": 1, "available": 1}

        pod = await kube.get(f"/api/v1/namespaces/{NS}/pods/{NAME}-0")
        assert pod["metadata"]["labels"]["kaito.sh/workspace"] == NAME
        assert pod["spec"]["containers"][0]["name"] == "model"
        assert pod["spec"]["containers"][0]["image"] == "ghcr.io/kaito-project/aikit/llama3.2:1b"
        service = await kube.get(f"/api/v1/namespaces/{NS}/services/{NAME}")
        assert service["spec"]["ports"][0]["port"] == 80
        assert service["spec"]["selector"] == {"kaito.sh/workspace": NAME}
        await kube.get(f"/api/v1/namespaces/{NS}/services/{NAME}-headless")

        answer = await chat(kube)
        assert answer["object"] == "chat.completion"
        assert answer["model"] == deployment["modelId"]
        choice = answer["choices"][0]
        assert choice["message"]["role"] == "assistant"
        assert isinstance(choice["message"]["content"], str)
        assert choice["finish_reason"] in ("stop", "length")
        usage = answer["usage"]
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]

        status, raw = await proxy_raw(
            kube,
            "v1/chat/completions",
            {
                "model": deployment["modelId"],
                "stream": True,
                "max_tokens": 4,
                "messages": [{"role": "user", "content": "Hi"}],
            },
        )
        assert status == 200
        events = [line[len(b"data: ") :] for line in raw.splitlines() if line.startswith(b"data: ")]
        assert events[-1] == b"[DONE]"
        assert all(json.loads(e)["object"] == "chat.completion.chunk" for e in events[:-1])

        timeline = [e.event for e in sandbox.timeline if e.name == NAME]
        assert timeline.index("ResourceReady=True") < timeline.index("InferenceReady=True")


async def test_delete_removes_pod_and_services_before_the_workspace(make_sandbox) -> None:
    async with make_sandbox() as (sandbox, api, kube):
        await install_kaito(api, kube)
        await create_deployment(api)
        await wait_for(kube, WS_COLLECTION, NAME, running_workspace)
        # As KAITO's own (GenerateServiceManifest, GenerateHeadlessServiceManifest): the
        # Services select the pods by kaito.sh/workspace but carry no label of their own,
        # so only their names find them.
        for name in (NAME, f"{NAME}-headless"):
            service = await kube.get(f"/api/v1/namespaces/{NS}/services/{name}")
            assert not service["metadata"].get("labels"), service["metadata"]
            assert service["spec"]["selector"]["kaito.sh/workspace"] == NAME

        status, body = await call(api, "DELETE", f"/api/deployments/{NAME}?namespace={NS}")
        assert (status, body) == (200, {"message": "Deployment deleted successfully"})
        await wait_for(kube, WS_COLLECTION, NAME, gone)

        for collection, name in (
            ("pods", f"{NAME}-0"),
            ("services", NAME),
            ("services", f"{NAME}-headless"),
        ):
            assert (
                await kube.get(
                    f"/api/v1/namespaces/{NS}/{collection}",
                    {"fieldSelector": f"metadata.name={name}"},
                )
            )["items"] == []
        events = [e.event for e in sandbox.timeline if e.name == NAME]
        assert events.index("pod and services deleted") < events.index("finalizer removed")
        status, body = await call(api, "GET", f"/api/deployments/{NAME}?namespace={NS}")
        assert (status, body["error"]["message"]) == (404, "Deployment not found")


async def test_nothing_is_reconciled_without_the_operator(make_sandbox) -> None:
    """Before install there is no CRD and no operator: a Workspace made behind KubeFoundry's back waits."""
    async with make_sandbox() as (sandbox, api, kube):
        await install_kaito(api, kube)
        pods = await kube.get(
            f"/api/v1/namespaces/{NS}/pods",
            {"labelSelector": "app.kubernetes.io/name=kaito-workspace"},
        )
        operator = pods["items"][0]["metadata"]["name"]
        await kube.delete(f"/api/v1/namespaces/{NS}/pods/{operator}", {"gracePeriodSeconds": 0})
        await wait_for(kube, f"/api/v1/namespaces/{NS}/pods", operator, gone)
        sandbox.update_faults({"image_pull_error": True})  # no model needed for this test
        await create_deployment(api)

        status, body = await call(api, "GET", "/api/installation/providers/kaito/status")
        assert (body["installed"], body["crdFound"], body["operatorRunning"]) == (
            False,
            True,
            False,
        )
        assert body["message"] == "KAITO operator is not running"

        # Reinstalling brings the operator back, and only then is the Workspace reconciled.
        status, body = await call(api, "POST", "/api/installation/providers/kaito/install")
        assert status == 200 and body["installing"] is True
        ws = await wait_for(
            kube,
            WS_COLLECTION,
            NAME,
            lambda w: (
                "workspace.finalizer.kaito.sh"
                in ((w or {}).get("metadata", {}).get("finalizers") or [])
            ),
        )
        assert ws is not None
        await wait_for(kube, f"/api/v1/namespaces/{NS}/pods", f"{NAME}-0", pod_phase("Pending"))


def drop_the_release(monkeypatch: pytest.MonkeyPatch, pod_name: str) -> list[str]:
    """Make the in-process kubelet miss the release of a held pod, once.

    The test cluster's kubelet drops a pod's change that arrives while it is still
    writing that pod's previous state, and never looks at the pod again: under load the
    release of a held pod can be that change. Here the in-process kubelet drops exactly
    that change (the first one it sees of ``pod_name`` with the hold gone), every time.
    Returns the names of the pods whose release was dropped.
    """
    from orchestrator.sandbox._kubefoundry.installation import OPERATOR_HOLD
    from orchestrator.sandbox.kubeapi._kubelet import FakeKubelet

    handle = FakeKubelet._handle
    dropped: list[str] = []

    def dropping(self: FakeKubelet, ns: str, name: str, uid: str) -> None:
        pod = self._fresh(ns, name, uid)
        if pod is not None and name.startswith(pod_name) and name not in dropped:
            held = OPERATOR_HOLD in (pod["metadata"].get("annotations") or {})
            if not held and (pod.get("status") or {}).get("phase") == "Pending":
                dropped.append(name)
                return
        handle(self, ns, name, uid)

    monkeypatch.setattr(FakeKubelet, "_handle", dropping)
    return dropped


@pytest.mark.parametrize("kube_backend", ["kubeapi"], indirect=True)
async def test_a_release_the_kubelet_missed_is_made_again(
    make_sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model pod's release is lost: the stand-in sees the pod still Pending and touches
    it until the kubelet starts it, so the Workspace still gets ready (it used to stay
    ResourceReady only, and a run waited out Wait Ready)."""
    dropped = drop_the_release(monkeypatch, f"{NAME}-0")
    async with make_sandbox() as (sandbox, api, kube):
        await install_kaito(api, kube)
        await create_deployment(api)
        await wait_for(kube, WS_COLLECTION, NAME, running_workspace)
        assert dropped == [f"{NAME}-0"]
        events = [e.event for e in sandbox.timeline if e.name == f"{NAME}-0"]
        assert events[0] == "pod released"
        assert "pod still Pending: kubelet nudged" in events


@pytest.mark.parametrize("kube_backend", ["kubeapi"], indirect=True)
async def test_an_operator_release_the_kubelet_missed_is_made_again(
    make_sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same for the KAITO operator pod: without a second touch it never ran, KAITO was
    never installed and nothing was ever reconciled."""
    dropped = drop_the_release(monkeypatch, "kaito-workspace-")
    async with make_sandbox() as (sandbox, api, kube):
        await install_kaito(api, kube)  # waits (on watches) for the operator pod Running
        assert len(dropped) == 1 and dropped[0].startswith("kaito-workspace-")
