"""Sandbox-only: the faults KubeFaults injects, and the bounded watch history."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException

from orchestrator.sandbox.kubeapi import KubeAPIServer

if TYPE_CHECKING:
    from tests.sandbox.conftest import Kube

pytestmark = [pytest.mark.anyio, pytest.mark.cluster]

NS = "default"


def _crd(group: str) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"gadgets.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": "gadgets", "singular": "gadget", "kind": "Gadget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": {"type": "object"}},
                }
            ],
        },
    }


async def test_watch_cut_after_ends_streams_and_clients_reconnect(sandbox: Kube) -> None:
    assert sandbox.server is not None
    sandbox.server.faults.watch_cut_after = 0.2
    v1 = client.CoreV1Api(sandbox.api)
    seen = anyio.Event()
    names: list[str] = []

    async def forever() -> None:
        w = watch.Watch()  # no timeout: the client reconnects whenever the stream ends
        try:
            async for ev in w.stream(v1.list_namespaced_config_map, NS):
                names.append(ev["object"].metadata.name)
                if ev["object"].metadata.name == "late":
                    seen.set()
                    return
        finally:
            await w.close()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(forever)
            # a raw stream started after the client's ends by itself: so the client's was cut too
            resp = await v1.list_namespaced_config_map(NS, watch=True, _preload_content=False)
            async with resp:
                assert await resp.content.read() == b""
            await v1.create_namespaced_config_map(NS, {"metadata": {"name": "late"}})
            await seen.wait()
    assert names == ["late"]


async def test_gone_once_answers_410_once(sandbox: Kube) -> None:
    assert sandbox.server is not None
    v1 = client.CoreV1Api(sandbox.api)
    listed = await v1.list_namespaced_config_map(NS)
    sandbox.server.faults.gone_once = True
    w = watch.Watch()
    with pytest.raises(ApiException) as err:
        async for _ in w.stream(
            v1.list_namespaced_config_map,
            NS,
            resource_version=listed.metadata.resource_version,
            timeout_seconds=2,
        ):
            pass
    await w.close()
    assert err.value.status == 410
    assert sandbox.server.faults.gone_once is False
    resp = await v1.list_namespaced_config_map(
        NS,
        watch=True,
        resource_version=listed.metadata.resource_version,
        timeout_seconds=1,
        _preload_content=False,
    )
    async with resp:
        assert await resp.content.read() == b""  # a normal, empty stream this time


async def test_too_many_requests_after_crd(sandbox: Kube) -> None:
    assert sandbox.server is not None
    sandbox.server.faults.too_many_requests_after_crd = 60
    ext = client.ApiextensionsV1Api(sandbox.api)
    co = client.CustomObjectsApi(sandbox.api)
    await ext.create_custom_resource_definition(_crd("busy.test"))
    for call in (
        lambda: co.list_namespaced_custom_object("busy.test", "v1", NS, "gadgets"),
        lambda: co.list_namespaced_custom_object(
            "busy.test", "v1", NS, "gadgets", watch=True, timeout_seconds=1
        ),
    ):
        with pytest.raises(ApiException) as err:
            await call()
        assert err.value.status == 429
        assert err.value.headers["Retry-After"] == "1"
        body = json.loads(err.value.body)
        assert (body["reason"], body["message"], body["details"]) == (
            "TooManyRequests",
            "storage is (re)initializing",
            {"retryAfterSeconds": 1},
        )
    # core resources are not affected, nor CRDs established while the fault is off
    await client.CoreV1Api(sandbox.api).list_namespaced_pod(NS)
    sandbox.server.faults.too_many_requests_after_crd = 0
    await ext.create_custom_resource_definition(_crd("calm.test"))
    assert (await co.list_namespaced_custom_object("calm.test", "v1", NS, "gadgets"))["items"] == []


async def test_history_is_bounded(anyio_backend: str) -> None:
    async with KubeAPIServer(history=5) as server:
        cfg = client.Configuration(host=server.url)
        async with client.ApiClient(cfg) as api:
            v1 = client.CoreV1Api(api)
            first = await v1.create_namespaced_config_map(NS, {"metadata": {"name": "c0"}})
            for i in range(1, 8):
                await v1.create_namespaced_config_map(NS, {"metadata": {"name": f"c{i}"}})
            resp = await v1.list_namespaced_config_map(
                NS,
                watch=True,
                resource_version=first.metadata.resource_version,
                timeout_seconds=1,
                _preload_content=False,
            )
            async with resp:
                event = json.loads(await resp.content.readline())
            assert event["type"] == "ERROR" and event["object"]["code"] == 410


async def test_stop_closes_watch_streams(anyio_backend: str) -> None:
    server = KubeAPIServer()
    await server.start()
    cfg = client.Configuration(host=server.url)
    async with client.ApiClient(cfg) as api:
        resp = await client.CoreV1Api(api).list_namespaced_pod(
            NS, watch=True, _preload_content=False
        )
        with anyio.fail_after(60):  # a hang guard: the stop ends the stream at once
            async with anyio.create_task_group() as tg:
                tg.start_soon(server.stop)
                async with resp:
                    await resp.content.read()
