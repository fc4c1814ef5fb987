"""One Kubernetes API conformance suite, run against the sandbox server and the real test cluster.

Every `kube` test asserts the same things on both backends: if the sandbox
drifts from the real server, these fail. Waiting is done on watch events
under deadlines, never by sleeping.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
import pytest
import yaml
from _fixtures import (
    PULL_REASONS,
    crash_loop_shape_problems,
    pull_events_problems,
    pull_shape_problems,
)
from aiohttp import web
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException

if TYPE_CHECKING:
    from tests.sandbox.conftest import Kube

pytestmark = [pytest.mark.anyio, pytest.mark.cluster]

NS = "default"
GROUP, VERSION, PLURAL = "example.test", "v1", "widgets"
# CustomObjectsApi would send a dict as application/json-patch+json, which servers reject.
MERGE = {"_content_type": "application/merge-patch+json"}
WIDGET_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": f"{PLURAL}.{GROUP}"},
    "spec": {
        "group": GROUP,
        "scope": "Namespaced",
        "names": {
            "plural": PLURAL,
            "singular": "widget",
            "kind": "Widget",
            "listKind": "WidgetList",
        },
        "versions": [
            {
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "x-kubernetes-preserve-unknown-fields": True,
                    }
                },
            }
        ],
    },
}


# -- helpers -----------------------------------------------------------------------


def as_dict(kube: Kube, obj: Any) -> dict[str, Any]:
    """Models and plain dicts alike, with the wire (camelCase) keys."""
    return obj if isinstance(obj, dict) else kube.api.sanitize_for_serialization(obj)


async def retry_429(call: Callable[[], Awaitable[Any]]) -> Any:
    """Retry while the server says its storage is initializing, honouring Retry-After."""
    while True:
        try:
            return await call()
        except ApiException as exc:
            if exc.status != 429:
                raise
            await anyio.sleep(float((exc.headers or {}).get("Retry-After", "1")))


#: How long a wait for an event may take before it fails: only a hang reaches it. An
#: API server on a loaded machine (other tests' clusters, CRD installs) can take well
#: over ten seconds to show a change; a passing wait never waits this out.
WAIT = 60.0


async def wait_for(
    kube: Kube,
    list_fn: Callable[..., Any],
    *args: Any,
    predicate: Callable[[dict[str, Any]], bool],
    timeout: float = WAIT,
    **kwargs: Any,
) -> dict[str, Any]:
    """List, then watch from the list's resourceVersion until an object satisfies `predicate`."""
    with anyio.fail_after(timeout):
        while True:
            listed = as_dict(kube, await retry_429(lambda: list_fn(*args, **kwargs)))
            for item in listed.get("items") or []:
                if predicate(item):
                    return item
            w = watch.Watch()
            rv = listed["metadata"]["resourceVersion"]
            try:
                async for ev in w.stream(
                    list_fn, *args, resource_version=rv, timeout_seconds=int(timeout) + 1, **kwargs
                ):
                    obj = as_dict(kube, ev["object"])
                    if ev["type"] != "DELETED" and predicate(obj):
                        return obj
            except ApiException as exc:
                if exc.status not in (410, 429):
                    raise
            finally:
                await w.close()


async def wait_gone(
    kube: Kube,
    list_fn: Callable[..., Any],
    *args: Any,
    name: str,
    timeout: float = WAIT,
    **kwargs: Any,
) -> None:
    with anyio.fail_after(timeout):
        listed = as_dict(
            kube, await list_fn(*args, field_selector=f"metadata.name={name}", **kwargs)
        )
        if not listed["items"]:
            return
        w = watch.Watch()
        try:
            async for ev in w.stream(
                list_fn,
                *args,
                field_selector=f"metadata.name={name}",
                resource_version=listed["metadata"]["resourceVersion"],
                timeout_seconds=int(timeout) + 1,
                **kwargs,
            ):
                if ev["type"] == "DELETED":
                    return
        finally:
            await w.close()
        raise AssertionError(f"{name} was not deleted")


async def install_crd(kube: Kube, crd: dict[str, Any]) -> dict[str, Any]:
    ext = client.ApiextensionsV1Api(kube.api)
    await ext.create_custom_resource_definition(crd)
    name = crd["metadata"]["name"]

    def established(obj: dict[str, Any]) -> bool:
        conds = (obj.get("status") or {}).get("conditions") or []
        return obj["metadata"]["name"] == name and any(
            c["type"] == "Established" and c["status"] == "True" for c in conds
        )

    return await wait_for(kube, ext.list_custom_resource_definition, predicate=established)


def pod_manifest(
    name: str,
    annotations: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
    containers: list[str] | None = None,
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations or {}, "labels": labels or {}},
        "spec": {
            "containers": [{"name": c, "image": "busybox:1.36"} for c in (containers or ["main"])]
        },
    }


async def patch_pod_status(kube: Kube, name: str, body: dict[str, Any]) -> dict[str, Any]:
    """A merge patch of the pod's status subresource, as a kubelet (or a stand-in) writes."""
    return dict(
        await kube.api.call_api(
            f"/api/v1/namespaces/{NS}/pods/{name}/status",
            "PATCH",
            body=body,
            header_params={
                "Content-Type": "application/merge-patch+json",
                "Accept": "application/json",
            },
            auth_settings=["BearerToken"],
            response_types_map={200: "object"},
            _return_http_data_only=True,
        )
    )


def running(obj: dict[str, Any]) -> bool:
    return (obj.get("status") or {}).get("phase") == "Running"


def status_body(exc: ApiException) -> dict[str, Any]:
    return json.loads(exc.body)


# -- CRUD ----------------------------------------------------------------------------


async def test_pod_create_get_list_patch_delete(kube: Kube) -> None:
    v1 = client.CoreV1Api(kube.api)
    created = await v1.create_namespaced_pod(NS, pod_manifest("crud", labels={"app": "crud"}))
    assert created.metadata.uid and int(created.metadata.resource_version) > 0
    assert created.spec.restart_policy == "Always"
    assert created.spec.termination_grace_period_seconds == 30

    got = await v1.read_namespaced_pod("crud", NS)
    assert got.metadata.uid == created.metadata.uid

    listed = await v1.list_namespaced_pod(NS, label_selector="app=crud")
    assert [p.metadata.name for p in listed.items] == ["crud"]
    assert int(listed.metadata.resource_version) >= int(created.metadata.resource_version)

    patched = await v1.patch_namespaced_pod("crud", NS, {"metadata": {"labels": {"tier": "web"}}})
    assert patched.metadata.labels == {"app": "crud", "tier": "web"}
    assert int(patched.metadata.resource_version) > int(created.metadata.resource_version)

    jp = await kube.api.call_api(
        f"/api/v1/namespaces/{NS}/pods/crud",
        "PATCH",
        body=[
            {"op": "remove", "path": "/metadata/labels/tier"},
            {"op": "add", "path": "/metadata/annotations", "value": {"a": "b"}},
        ],
        header_params={"Content-Type": "application/json-patch+json", "Accept": "application/json"},
        auth_settings=["BearerToken"],
        response_types_map={200: "object"},
        _return_http_data_only=True,
    )
    assert jp["metadata"]["labels"] == {"app": "crud"} and jp["metadata"]["annotations"]["a"] == "b"

    await v1.delete_namespaced_pod("crud", NS, grace_period_seconds=0)
    await wait_gone(kube, v1.list_namespaced_pod, NS, name="crud")
    with pytest.raises(ApiException) as err:
        await v1.read_namespaced_pod("crud", NS)
    assert err.value.status == 404


async def test_not_found_and_conflict_status_shapes(kube: Kube) -> None:
    v1 = client.CoreV1Api(kube.api)
    with pytest.raises(ApiException) as err:
        await v1.read_namespaced_pod("nope", NS)
    assert err.value.status == 404
    assert status_body(err.value) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'pods "nope" not found',
        "reason": "NotFound",
        "details": {"name": "nope", "kind": "pods"},
        "code": 404,
    }
    await v1.create_namespaced_config_map(NS, {"metadata": {"name": "dup"}})
    with pytest.raises(ApiException) as err:
        await v1.create_namespaced_config_map(NS, {"metadata": {"name": "dup"}})
    body = status_body(err.value)
    assert (err.value.status, body["reason"], body["message"]) == (
        409,
        "AlreadyExists",
        'configmaps "dup" already exists',
    )
    with pytest.raises(ApiException) as err:
        await v1.create_namespaced_config_map(NS, {"metadata": {}})
    assert err.value.status == 422 and status_body(err.value)["reason"] == "Invalid"
    stale = await v1.read_namespaced_config_map("dup", NS)
    await v1.patch_namespaced_config_map("dup", NS, {"data": {"k": "v"}})
    with pytest.raises(ApiException) as err:
        await v1.replace_namespaced_config_map("dup", NS, stale)
    assert err.value.status == 409 and status_body(err.value)["reason"] == "Conflict"


async def test_custom_objects_crud_and_status_subresource(kube: Kube) -> None:
    await install_crd(kube, WIDGET_CRD)
    co = client.CustomObjectsApi(kube.api)
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Widget",
        "metadata": {"name": "w1", "labels": {"a": "1"}},
        "spec": {"size": 1},
        "status": {"ignored": True},
    }
    created = await retry_429(
        lambda: co.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, body)
    )
    assert created["metadata"]["generation"] == 1 and "status" not in created

    got = await co.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "w1")
    assert got["spec"] == {"size": 1} and got["kind"] == "Widget"
    listed = await retry_429(
        lambda: co.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, label_selector="a=1")
    )
    assert [i["metadata"]["name"] for i in listed["items"]] == ["w1"]
    assert listed["kind"] == "WidgetList"

    patched = await co.patch_namespaced_custom_object(
        GROUP, VERSION, NS, PLURAL, "w1", {"spec": {"size": 2}}, **MERGE
    )
    assert patched["spec"]["size"] == 2 and patched["metadata"]["generation"] == 2

    status = await co.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        NS,
        PLURAL,
        "w1",
        {"metadata": {"labels": {"a": "2"}}, "status": {"phase": "Ready"}},
        **MERGE,
    )
    assert status["status"] == {"phase": "Ready"} and status["metadata"]["generation"] == 2
    # a custom resource's /status changes only the status (a core object's keeps metadata)
    assert status["metadata"]["labels"] == {"a": "1"}
    # the main resource cannot change status once the subresource exists
    again = await co.patch_namespaced_custom_object(
        GROUP, VERSION, NS, PLURAL, "w1", {"status": {"phase": "Nope"}}, **MERGE
    )
    assert again["status"] == {"phase": "Ready"}

    await co.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "w1")
    with pytest.raises(ApiException) as err:
        await co.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "w1")
    body404 = status_body(err.value)
    assert err.value.status == 404
    assert body404["message"] == 'widgets.example.test "w1" not found'
    assert body404["details"] == {"name": "w1", "group": GROUP, "kind": PLURAL}


async def test_kaito_workspace_crd(kube: Kube) -> None:
    crds_dir = os.environ.get("KAITO_CRDS_DIR")
    if not crds_dir:
        pytest.skip("KAITO_CRDS_DIR is not set")
    crd = yaml.safe_load(pathlib.Path(crds_dir, "kaito.sh_workspaces.yaml").read_text())
    await install_crd(kube, crd)
    co = client.CustomObjectsApi(kube.api)
    ws = {
        "apiVersion": "kaito.sh/v1beta1",
        "kind": "Workspace",
        "metadata": {"name": "phi"},
        "resource": {
            "instanceType": "Standard_NC24ads_A100_v4",
            "labelSelector": {"matchLabels": {"apps": "phi"}},
        },
        "inference": {"preset": {"name": "phi-4-mini-instruct"}},
    }
    created = await retry_429(
        lambda: co.create_namespaced_custom_object("kaito.sh", "v1beta1", NS, "workspaces", ws)
    )
    assert created["inference"]["preset"]["name"] == "phi-4-mini-instruct"
    cond = {
        "type": "InferenceReady",
        "status": "True",
        "reason": "Ready",
        "message": "ok",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }
    updated = await co.patch_namespaced_custom_object_status(
        "kaito.sh", "v1beta1", NS, "workspaces", "phi", {"status": {"conditions": [cond]}}, **MERGE
    )
    assert updated["status"]["conditions"][0]["type"] == "InferenceReady"

    def ready(obj: dict[str, Any]) -> bool:
        return any(
            c["type"] == "InferenceReady" for c in (obj.get("status") or {}).get("conditions") or []
        )

    found = await wait_for(
        kube,
        co.list_namespaced_custom_object,
        "kaito.sh",
        "v1beta1",
        NS,
        "workspaces",
        predicate=ready,
    )
    assert found["metadata"]["name"] == "phi"


# -- list and watch --------------------------------------------------------------------


async def collect(
    kube: Kube,
    list_fn: Callable[..., Any],
    *args: Any,
    rv: str,
    until: Callable[[str, dict[str, Any]], bool],
    timeout: float = WAIT,
    **kwargs: Any,
) -> list[tuple[str, str]]:
    """(type, name) of watch events from `rv` until `until` says stop."""
    seen: list[tuple[str, str]] = []
    w = watch.Watch()
    try:
        with anyio.fail_after(timeout):
            async for ev in w.stream(
                list_fn, *args, resource_version=rv, timeout_seconds=int(timeout) + 1, **kwargs
            ):
                obj = as_dict(kube, ev["object"])
                seen.append((ev["type"], obj["metadata"]["name"]))
                if until(ev["type"], obj):
                    break
    finally:
        await w.close()
    return seen


async def test_list_then_watch_sees_exactly_the_later_changes(kube: Kube) -> None:
    v1 = client.CoreV1Api(kube.api)
    sel = {"label_selector": "suite=watch"}
    await v1.create_namespaced_config_map(
        NS, {"metadata": {"name": "before", "labels": {"suite": "watch"}}}
    )
    listed = await v1.list_namespaced_config_map(NS, **sel)
    assert [i.metadata.name for i in listed.items] == ["before"]
    rv = listed.metadata.resource_version

    await v1.create_namespaced_config_map(
        NS, {"metadata": {"name": "after", "labels": {"suite": "watch"}}}
    )
    await v1.patch_namespaced_config_map("before", NS, {"data": {"k": "v"}})
    await v1.delete_namespaced_config_map("after", NS)
    # leaving the selection reads as DELETED for this watcher
    await v1.patch_namespaced_config_map("before", NS, {"metadata": {"labels": {"suite": "other"}}})

    events = await collect(
        kube,
        v1.list_namespaced_config_map,
        NS,
        rv=rv,
        until=lambda t, o: t == "DELETED" and o["metadata"]["name"] == "before",
        **sel,
    )
    assert events == [
        ("ADDED", "after"),
        ("MODIFIED", "before"),
        ("DELETED", "after"),
        ("DELETED", "before"),
    ]

    # resourceVersions are one increasing sequence across kinds
    cm = await v1.read_namespaced_config_map("before", NS)
    pod = await v1.create_namespaced_pod(
        NS, pod_manifest("rv-check", {"fake-kubelet/phase": "Pending"})
    )
    assert int(pod.metadata.resource_version) > int(cm.metadata.resource_version)


async def test_label_selectors(kube: Kube) -> None:
    v1 = client.CoreV1Api(kube.api)
    for name, labels in {
        "a": {"env": "prod", "tier": "web"},
        "b": {"env": "dev"},
        "c": {"tier": "db"},
    }.items():
        await v1.create_namespaced_config_map(NS, {"metadata": {"name": name, "labels": labels}})

    async def names(selector: str) -> list[str]:
        listed = await v1.list_namespaced_config_map(NS, label_selector=selector)
        return sorted(i.metadata.name for i in listed.items if i.metadata.name in ("a", "b", "c"))

    assert await names("env=prod") == ["a"]
    assert await names("env==dev") == ["b"]
    assert await names("env!=prod") == ["b", "c"]
    assert await names("env in (prod,dev)") == ["a", "b"]
    assert await names("env notin (prod)") == ["b", "c"]
    assert await names("tier") == ["a", "c"]
    assert await names("!tier") == ["b"]
    assert await names("env=prod,tier=web") == ["a"]
    with pytest.raises(ApiException) as err:
        await v1.list_namespaced_config_map(NS, label_selector="env in (prod")
    assert err.value.status == 400


async def test_event_field_selector(kube: Kube) -> None:
    v1 = client.CoreV1Api(kube.api)
    await v1.create_namespaced_pod(NS, pod_manifest("ev-a"))
    await v1.create_namespaced_pod(NS, pod_manifest("ev-b"))
    selector = "involvedObject.name=ev-a,involvedObject.kind=Pod"
    started = await wait_for(
        kube,
        v1.list_namespaced_event,
        NS,
        field_selector=selector,
        predicate=lambda e: e.get("reason") == "Started",
    )
    assert started["involvedObject"]["name"] == "ev-a" and started["type"] == "Normal"
    assert started["count"] >= 1 and started["firstTimestamp"] and started["lastTimestamp"]
    events = await v1.list_namespaced_event(NS, field_selector=selector)
    assert {e.involved_object.name for e in events.items} == {"ev-a"}
    assert {"Scheduled", "Pulled", "Created", "Started"} <= {e.reason for e in events.items}
    with pytest.raises(ApiException) as err:
        await v1.list_namespaced_event(NS, field_selector="nope=1")
    assert (
        err.value.status == 400 and "field label not supported" in status_body(err.value)["message"]
    )


async def test_watch_from_expired_resource_version_is_410(kube: Kube) -> None:
    # A custom resource's history starts when its CRD is established, so "1" is too old on both backends.
    await install_crd(kube, WIDGET_CRD)
    co = client.CustomObjectsApi(kube.api)
    await retry_429(
        lambda: co.create_namespaced_custom_object(
            GROUP,
            VERSION,
            NS,
            PLURAL,
            {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Widget", "metadata": {"name": "w"}},
        )
    )
    resp = await retry_429(
        lambda: co.list_namespaced_custom_object(
            GROUP,
            VERSION,
            NS,
            PLURAL,
            watch=True,
            resource_version="1",
            timeout_seconds=5,
            _preload_content=False,
        )
    )
    async with resp:
        assert resp.status == 200
        first = json.loads(await resp.content.readline())
    assert first["type"] == "ERROR"
    assert first["object"]["code"] == 410 and first["object"]["reason"] == "Expired"
    assert first["object"]["message"].startswith("too old resource version: 1 (")

    w = watch.Watch()
    with pytest.raises(ApiException) as err:
        async for _ in w.stream(
            co.list_namespaced_custom_object,
            GROUP,
            VERSION,
            NS,
            PLURAL,
            resource_version="1",
            timeout_seconds=5,
        ):
            pass
    await w.close()
    assert err.value.status == 410


async def test_finalizers_hold_deletion(kube: Kube) -> None:
    v1 = client.CoreV1Api(kube.api)
    created = await v1.create_namespaced_config_map(
        NS, {"metadata": {"name": "held", "finalizers": ["example.test/hold"]}}
    )
    await v1.delete_namespaced_config_map("held", NS)
    held = await v1.read_namespaced_config_map("held", NS)
    assert held.metadata.deletion_timestamp is not None
    assert held.metadata.finalizers == ["example.test/hold"]
    await v1.patch_namespaced_config_map("held", NS, {"metadata": {"finalizers": None}})
    events = await collect(
        kube,
        v1.list_namespaced_config_map,
        NS,
        rv=created.metadata.resource_version,
        until=lambda t, o: t == "DELETED",
        field_selector="metadata.name=held",
    )
    assert events == [("MODIFIED", "held"), ("DELETED", "held")]
    with pytest.raises(ApiException) as err:
        await v1.read_namespaced_config_map("held", NS)
    assert err.value.status == 404


# -- the fake kubelet ----------------------------------------------------------------------


async def test_pod_goes_running(kube: Kube) -> None:
    v1 = client.CoreV1Api(kube.api)
    await v1.create_namespaced_pod(NS, pod_manifest("runner", {"fake-kubelet/delay": "100ms"}))
    pod = await wait_for(
        kube, v1.list_namespaced_pod, NS, field_selector="metadata.name=runner", predicate=running
    )
    assert pod["spec"]["nodeName"] in ("fake-node-0", "fake-node-1")
    st = pod["status"]
    assert st["podIP"] and st["startTime"]
    assert {c["type"]: c["status"] for c in st["conditions"]} == {
        "PodScheduled": "True",
        "Initialized": "True",
        "ContainersReady": "True",
        "Ready": "True",
    }
    [cs] = st["containerStatuses"]
    assert cs["ready"] is True and "running" in cs["state"]
    nodes = await client.CoreV1Api(kube.api).list_node()
    assert {n.metadata.name for n in nodes.items} >= {"fake-node-0", "fake-node-1"}


async def test_pod_waiting_reason_stays_pending(kube: Kube) -> None:
    v1 = client.CoreV1Api(kube.api)
    ann = {"fake-kubelet/phase": "Pending", "fake-kubelet/waiting-reason": "ImagePullBackOff"}
    await v1.create_namespaced_pod(NS, pod_manifest("stuck", ann))

    def waiting(obj: dict[str, Any]) -> bool:
        statuses = (obj.get("status") or {}).get("containerStatuses") or []
        return (
            bool(statuses)
            and (statuses[0]["state"].get("waiting") or {}).get("reason") == "ImagePullBackOff"
        )

    pod = await wait_for(
        kube, v1.list_namespaced_pod, NS, field_selector="metadata.name=stuck", predicate=waiting
    )
    assert pod["status"]["phase"] == "Pending" and pod["spec"]["nodeName"]
    with pytest.raises(ApiException) as err:
        await v1.read_namespaced_pod_log("stuck", NS)
    assert err.value.status == 400
    assert (
        status_body(err.value)["message"]
        == 'container "main" in pod "stuck" is waiting to start: ImagePullBackOff'
    )


async def test_a_crash_loop_waiting_reason_is_shown_as_a_kubelet_shows_it(sandbox: Kube) -> None:
    """A deliberate difference (kubeapi/README.md): annotated to wait in CrashLoopBackOff,
    the pod shows a container that ran, exited and backs off, in one write, Running with
    a restart and its last termination, as a kubelet writes it. The test cluster's fake
    kubelet writes Pending with no restart, a shape no kubelet writes; the stand-ins do
    not rely on it and write the crash loop themselves on both backends."""
    v1 = client.CoreV1Api(sandbox.api)
    ann = {
        "fake-kubelet/phase": "Pending",
        "fake-kubelet/waiting-reason": "CrashLoopBackOff",
        "fake-kubelet/exit-code": "3",
    }
    await v1.create_namespaced_pod(NS, pod_manifest("looper", ann))
    pod = await wait_for(
        sandbox,
        v1.list_namespaced_pod,
        NS,
        field_selector="metadata.name=looper",
        predicate=lambda p: bool((p.get("status") or {}).get("containerStatuses")),
    )
    assert crash_loop_shape_problems(pod) == []
    [cs] = pod["status"]["containerStatuses"]
    assert cs["restartCount"] == 1 and cs["lastState"]["terminated"]["exitCode"] == 3
    assert await v1.read_namespaced_pod_log("looper", NS, previous=True) is not None


@pytest.mark.parametrize("reason", ["ErrImagePull", "ImagePullBackOff"])
async def test_an_image_pull_waiting_reason_is_worded_as_a_kubelet_words_it(
    sandbox: Kube, reason: str
) -> None:
    """A deliberate difference (kubeapi/README.md): annotated to wait for its image, the
    container shows the kubelet's waiting message and the pod the kubelet's events up to
    that reason (a back-off comes after a failed pull). The test cluster's fake kubelet
    writes the reason alone; the KAITO stand-in writes a pull failure itself on both
    backends (tests/sandbox/test_faults.py)."""
    v1 = client.CoreV1Api(sandbox.api)
    name = f"pull-{reason.lower()}"
    ann = {"fake-kubelet/phase": "Pending", "fake-kubelet/waiting-reason": reason}
    await v1.create_namespaced_pod(NS, pod_manifest(name, ann))
    pod = await wait_for(
        sandbox,
        v1.list_namespaced_pod,
        NS,
        field_selector=f"metadata.name={name}",
        predicate=lambda p: bool((p.get("status") or {}).get("containerStatuses")),
    )
    assert pull_shape_problems(pod) == []
    events = as_dict(sandbox, await v1.list_namespaced_event(NS))["items"]
    shown = list(PULL_REASONS[: PULL_REASONS.index(reason) + 1])
    assert pull_events_problems(events, pod, shown) == []


async def test_pod_status_write_carries_labels_and_annotations(kube: Kube) -> None:
    """pods/status keeps the new labels and annotations (only the spec is kept from
    before), so one write can move a Pending pod to another waiting reason together with
    the fake kubelet's annotation for it: the stand-ins show a crash loop that way."""
    v1 = client.CoreV1Api(kube.api)
    await v1.create_namespaced_pod(NS, pod_manifest("crasher", {"fake-kubelet/phase": "Pending"}))

    def waiting(reason: str) -> Callable[[dict[str, Any]], bool]:
        def check(obj: dict[str, Any]) -> bool:
            statuses = (obj.get("status") or {}).get("containerStatuses") or []
            return (
                bool(obj["spec"].get("nodeName"))
                and bool(statuses)
                and (statuses[0]["state"].get("waiting") or {}).get("reason") == reason
            )

        return check

    settled = await wait_for(
        kube,
        v1.list_namespaced_pod,
        NS,
        field_selector="metadata.name=crasher",
        predicate=waiting("ContainerCreating"),
    )
    crash = {
        "name": "main",
        "image": "busybox:1.36",
        "imageID": "",
        "ready": False,
        "started": False,
        "restartCount": 3,
        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}},
    }
    written = await patch_pod_status(
        kube,
        "crasher",
        {
            "metadata": {
                "resourceVersion": settled["metadata"]["resourceVersion"],
                "labels": {"crashed": "yes"},
                "annotations": {"fake-kubelet/waiting-reason": "CrashLoopBackOff"},
            },
            "spec": {"containers": [{"name": "main", "image": "other:1"}]},
            "status": {"containerStatuses": [crash]},
        },
    )
    assert written["metadata"]["labels"] == {"crashed": "yes"}
    assert written["metadata"]["annotations"]["fake-kubelet/waiting-reason"] == "CrashLoopBackOff"
    assert written["spec"]["containers"][0]["image"] == "busybox:1.36"
    [shown] = written["status"]["containerStatuses"]
    assert shown["restartCount"] == 3 and shown["state"]["waiting"]["reason"] == "CrashLoopBackOff"


async def test_pod_logs(kube: Kube) -> None:
    v1 = client.CoreV1Api(kube.api)
    ann = {"fake-kubelet/log": "alpha\nbeta", "fake-kubelet/log.side": "side text"}
    await v1.create_namespaced_pod(NS, pod_manifest("talker", ann, containers=["main", "side"]))
    pod = await wait_for(
        kube, v1.list_namespaced_pod, NS, field_selector="metadata.name=talker", predicate=running
    )
    log = await v1.read_namespaced_pod_log("talker", NS, container="main")
    assert log.splitlines() == [
        f"container main started on node {pod['spec']['nodeName']}",
        "pod phase changed: Pending -> Running",
        "alpha",
        "beta",
    ]
    assert (
        await v1.read_namespaced_pod_log("talker", NS, container="main", tail_lines=1) == "beta\n"
    )
    assert (await v1.read_namespaced_pod_log("talker", NS, container="side")).endswith(
        "side text\n"
    )
    stamped = await v1.read_namespaced_pod_log(
        "talker", NS, container="main", timestamps=True, tail_lines=1
    )
    assert stamped.split(" ", 1)[1] == "beta\n" and stamped[:4].isdigit()
    assert len(await v1.read_namespaced_pod_log("talker", NS, container="main", limit_bytes=5)) == 5

    for params, message in [
        ({"container": "nope"}, "container nope is not valid for pod talker"),
        ({}, "a container name must be specified for pod talker, choose one of: [main side]"),
        (
            {"container": "main", "previous": True},
            'previous terminated container "main" in pod "talker" not found',
        ),
    ]:
        with pytest.raises(ApiException) as err:
            await v1.read_namespaced_pod_log("talker", NS, **params)
        assert err.value.status == 400 and status_body(err.value)["message"] == message


CRASH_TEXT = "model server: out of memory loading weights"


async def crash_looping_pod(kube: Kube, name: str) -> dict[str, Any]:
    """A pod whose container ran, exited and backs off, written through pods/status in
    the shape a kubelet writes it (as the stand-ins do, so it is the same on both)."""
    v1 = client.CoreV1Api(kube.api)
    ann = {"fake-kubelet/phase": "Pending", "fake-kubelet/log": CRASH_TEXT}
    await v1.create_namespaced_pod(NS, pod_manifest(name, ann))
    settled = await wait_for(
        kube,
        v1.list_namespaced_pod,
        NS,
        field_selector=f"metadata.name={name}",
        predicate=lambda p: (
            bool(p["spec"].get("nodeName"))
            and bool((p.get("status") or {}).get("containerStatuses"))
        ),
    )
    uid = settled["metadata"]["uid"]
    container_id = f"fake://{uid}/main"
    crash = {
        "name": "main",
        "image": "busybox:1.36",
        "imageID": "busybox:1.36",
        "containerID": container_id,
        "ready": False,
        "started": False,
        "restartCount": 2,
        "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 20s"}},
        "lastState": {
            "terminated": {
                "exitCode": 1,
                "reason": "Error",
                "startedAt": "2026-01-01T00:00:00Z",
                "finishedAt": "2026-01-01T00:00:02Z",
                "containerID": container_id,
            }
        },
    }
    return await patch_pod_status(
        kube,
        name,
        {
            "metadata": {
                "resourceVersion": settled["metadata"]["resourceVersion"],
                "annotations": {"fake-kubelet/waiting-reason": "CrashLoopBackOff"},
            },
            "status": {"phase": "Running", "containerStatuses": [crash]},
        },
    )


async def test_a_crash_looping_containers_last_instance_log(kube: Kube) -> None:
    """A container waiting in CrashLoopBackOff has no running instance. A kubelet then
    serves the log of the instance that last exited (its lastState) for the current log,
    and the same instance for ``previous=true`` (validateContainerLogStatus). The
    sandbox does both. The test cluster's fake kubelet serves ``previous`` only and
    answers the current log 400 "waiting to start", a deliberate difference
    (kubeapi/README.md): a reader that must work on all three asks for ``previous``."""
    v1 = client.CoreV1Api(kube.api)
    await crash_looping_pod(kube, "looping")
    previous = await v1.read_namespaced_pod_log("looping", NS, previous=True)
    assert previous.splitlines()[-1] == CRASH_TEXT
    assert await v1.read_namespaced_pod_log("looping", NS, previous=True, tail_lines=1) == (
        CRASH_TEXT + "\n"
    )
    if kube.backend == "testcluster":
        with pytest.raises(ApiException) as err:
            await v1.read_namespaced_pod_log("looping", NS)
        assert err.value.status == 400
        assert status_body(err.value)["message"] == (
            'container "main" in pod "looping" is waiting to start: CrashLoopBackOff'
        )
        return
    assert await v1.read_namespaced_pod_log("looping", NS) == previous
    # Following an instance that has exited ends with its log, as a kubelet ends it.
    with anyio.fail_after(10):
        assert await v1.read_namespaced_pod_log("looping", NS, follow=True) == previous


async def test_graceful_pod_deletion(kube: Kube) -> None:
    v1 = client.CoreV1Api(kube.api)
    await v1.create_namespaced_pod(NS, pod_manifest("leaver"))
    pod = await wait_for(
        kube, v1.list_namespaced_pod, NS, field_selector="metadata.name=leaver", predicate=running
    )
    await v1.delete_namespaced_pod("leaver", NS)
    events = await collect(
        kube,
        v1.list_namespaced_pod,
        NS,
        rv=pod["metadata"]["resourceVersion"],
        until=lambda t, o: t == "DELETED",
        field_selector="metadata.name=leaver",
    )
    assert events[0] == ("MODIFIED", "leaver") and events[-1] == ("DELETED", "leaver")
    killing = await v1.list_namespaced_event(
        NS, field_selector="involvedObject.name=leaver,reason=Killing"
    )
    assert [e.message for e in killing.items] == ["Stopping container main"]


# -- services/proxy --------------------------------------------------------------------------


class Backend:
    """A small model-server-like HTTP backend; its stream waits for the client before the second chunk."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.seen_headers: dict[str, str] = {}
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> Backend:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/stream", self._stream)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release.set()
        assert self._runner is not None
        await self._runner.cleanup()

    async def _models(self, request: web.Request) -> web.Response:
        self.seen_headers = dict(request.headers)
        return web.json_response(
            {"object": "list", "data": [{"id": "m"}], "query": request.query_string}
        )

    async def _chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response({"echo": body, "content_type": request.content_type})

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"data: first\n\n")
        await self.release.wait()
        await resp.write(b"data: second\n\n")
        await resp.write_eof()
        return resp


async def test_service_proxy(kube: Kube) -> None:
    v1 = client.CoreV1Api(kube.api)
    async with Backend() as backend:
        await v1.create_namespaced_service(
            NS,
            {
                "metadata": {
                    "name": "model",
                    "annotations": {"fake-kubelet/proxy-to": backend.url},
                },
                "spec": {"ports": [{"name": "http", "port": 80}]},
            },
        )
        # the generated method works as is (it returns the body as text)
        got = await v1.connect_get_namespaced_service_proxy_with_path("model:80", NS, "v1/models")
        assert "list" in got

        base = f"/api/v1/namespaces/{NS}/services/model:http/proxy"
        models = await kube.api.call_api(
            f"{base}/v1/models",
            "GET",
            query_params=[("limit", "5")],
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
            response_types_map={200: "object"},
            _return_http_data_only=True,
        )
        assert models == {"object": "list", "data": [{"id": "m"}], "query": "limit=5"}
        assert "authorization" not in {k.lower() for k in backend.seen_headers}

        data = await kube.api.call_api(
            f"{base}/v1/chat/completions",
            "POST",
            body={"messages": [{"role": "user", "content": "hi"}]},
            header_params={"Content-Type": "application/json", "Accept": "application/json"},
            auth_settings=["BearerToken"],
            response_types_map={200: "object"},
            _return_http_data_only=True,
        )
        assert data == {
            "echo": {"messages": [{"role": "user", "content": "hi"}]},
            "content_type": "application/json",
        }

        resp = await kube.api.call_api(
            f"{base}/v1/stream",
            "GET",
            header_params={"Accept": "text/event-stream"},
            auth_settings=["BearerToken"],
            _preload_content=False,
            _return_http_data_only=True,
        )
        async with resp:
            with anyio.fail_after(10):
                assert await resp.content.readline() == b"data: first\n"
                backend.release.set()
                rest = await resp.content.read()
        assert b"data: second" in rest


async def test_service_proxy_errors(kube: Kube) -> None:
    v1 = client.CoreV1Api(kube.api)
    await v1.create_namespaced_service(
        NS, {"metadata": {"name": "bare"}, "spec": {"ports": [{"port": 80}]}}
    )
    # a port nothing listens on: bind one, then close it
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    await listener.aclose()
    await v1.create_namespaced_service(
        NS,
        {
            "metadata": {
                "name": "dead",
                "annotations": {"fake-kubelet/proxy-to": f"http://127.0.0.1:{port}"},
            },
            "spec": {"ports": [{"port": 80}]},
        },
    )
    cases = [
        ("bare", 503, "ServiceUnavailable", 'no endpoints available for service "bare"'),
        (
            "dead",
            503,
            "ServiceUnavailable",
            f"error trying to reach service: dial tcp 127.0.0.1:{port}: connect: connection refused",
        ),
        ("ghost", 404, "NotFound", 'services "ghost" not found'),
    ]
    for name, code, reason, message in cases:
        with pytest.raises(ApiException) as err:
            await v1.connect_get_namespaced_service_proxy_with_path(
                f"{name}:80", NS, "x", path2="x"
            )
        body = status_body(err.value)
        assert (err.value.status, body["reason"], body["message"]) == (code, reason, message)
