"""The stand-ins reach their own API server in-process: the answers must be the HTTP ones.

The same scenario runs through the stand-ins' client twice against one server, once
in-process and once over loopback HTTP, and every answer (bodies, statuses, error
messages) must match, names aside.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from orchestrator.sandbox._kube import Kube, KubeError
from orchestrator.sandbox.kubeapi import KubeAPIServer

pytestmark = pytest.mark.anyio
NS = "default"
PODS = f"/api/v1/namespaces/{NS}/pods"
# ConfigMaps for the comparison: no controller touches them, so both runs see the same.
CONFIGMAPS = f"/api/v1/namespaces/{NS}/configmaps"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[KubeAPIServer, Path]]:
    async with KubeAPIServer() as srv:
        yield srv, srv.write_kubeconfig(tmp_path / "kubeconfig")


def configmap(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "labels": {"app": name}},
        "data": {"key": "value"},
    }


def pod(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": {"app": name},
            "annotations": {"fake-kubelet/phase": "Pending"},
        },
        "spec": {"containers": [{"name": "c", "image": "img"}]},
    }


async def scenario(kube: Kube, name: str) -> list[Any]:
    """Every kind of answer the stand-ins rely on, normalised so two runs compare."""
    out: list[Any] = []

    async def step(call: Any) -> None:
        try:
            result = await call
        except KubeError as exc:
            result = {"error": exc.status, "reason": exc.reason, "message": exc.message}
        out.append(result)

    path = f"{CONFIGMAPS}/{name}"
    await step(kube.create(CONFIGMAPS, configmap(name)))
    await step(kube.create(CONFIGMAPS, configmap(name)))  # 409: None
    await step(kube.get(path))
    await step(kube.get(CONFIGMAPS, {"labelSelector": f"app={name}"}))
    await step(kube.get(CONFIGMAPS, {"labelSelector": "app in ("}))  # 400
    await step(
        kube.merge_patch(path, {"metadata": {"labels": {"tier": "web"}}, "data": {"more": "x"}})
    )
    await step(
        kube.request(
            "PATCH",
            path,
            body={"metadata": {"resourceVersion": "1"}},
            content_type="application/merge-patch+json",
        )
    )  # 409 conflict
    await step(kube.get(f"{CONFIGMAPS}/{name}-missing"))  # 404
    await step(kube.get("/api/v1/nonsense"))  # 404, unknown type
    await step(kube.delete(path))
    await step(kube.delete(path))  # already gone: False
    text = json.dumps(out)
    for volatile in ("uid", "resourceVersion", "creationTimestamp"):
        text = _blank(text, volatile)
    return json.loads(text.replace(name, "NAME"))


def _blank(text: str, key: str) -> str:
    import re

    return re.sub(rf'"{key}": "[^"]*"', f'"{key}": "-"', text)


async def test_in_process_answers_are_the_http_answers(server: tuple[KubeAPIServer, Path]) -> None:
    srv, kubeconfig = server
    local = await Kube.from_kubeconfig(kubeconfig, local=srv)
    remote = await Kube.from_kubeconfig(kubeconfig)
    try:
        assert await scenario(local, "local") == await scenario(remote, "remote")
    finally:
        await local.close()
        await remote.close()


async def test_streaming_requests_are_refused_in_process(
    server: tuple[KubeAPIServer, Path],
) -> None:
    srv, _ = server
    for query in ({"watch": "true"}, {"follow": "true"}):
        with pytest.raises(ValueError, match="needs HTTP"):
            await srv.call("GET", PODS, query)
    with pytest.raises(ValueError, match="needs HTTP"):
        await srv.call("GET", f"/api/v1/namespaces/{NS}/services/s:80/proxy/health")


async def test_in_process_watches_see_what_http_watches_see(
    server: tuple[KubeAPIServer, Path],
) -> None:
    srv, kubeconfig = server
    local = await Kube.from_kubeconfig(kubeconfig, local=srv)
    remote = await Kube.from_kubeconfig(kubeconfig)
    try:
        since = (await local.get(CONFIGMAPS))["metadata"]["resourceVersion"]
        await local.create(CONFIGMAPS, configmap("a"))
        await local.merge_patch(f"{CONFIGMAPS}/a", {"data": {"key": "changed"}})
        await local.create(CONFIGMAPS, configmap("b"))
        await local.delete(f"{CONFIGMAPS}/a")

        async def events(kube: Kube) -> list[tuple[str, str, str]]:
            seen = []
            with anyio.fail_after(10):
                async for event in kube.watch(CONFIGMAPS, {"labelSelector": "app=a"}, since, 10):
                    obj = event["object"]
                    seen.append((event["type"], obj["metadata"]["name"], obj["data"]["key"]))
                    if event["type"] == "DELETED":
                        return seen
            return seen

        expected = [
            ("ADDED", "a", "value"),
            ("MODIFIED", "a", "changed"),
            ("DELETED", "a", "changed"),
        ]
        assert await events(local) == await events(remote) == expected
        for kube in (local, remote):  # a bad selector is an error answer either way
            with pytest.raises(KubeError) as err:
                async for _ in kube.watch(CONFIGMAPS, {"labelSelector": "app in ("}, since, 10):
                    pass
            assert err.value.status == 400
    finally:
        await local.close()
        await remote.close()


async def test_the_service_proxy_lets_a_client_hang_up_quietly() -> None:
    """A client that stops reading a stream and closes (the inference client after the
    last token, a cancelled run) must not make the proxy raise: aiohttp would print the
    traceback on the console of a run that passed."""
    import asyncio

    import aiohttp
    from aiohttp import web

    from orchestrator.sandbox.kubeapi._proxy import forward

    release = asyncio.Event()

    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"data: first\n\n")
        await release.wait()
        for _ in range(50):
            await resp.write(b"data: more\n\n" * 100)
        await resp.write_eof()
        return resp

    ended: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

    async def proxy(request: web.Request) -> web.StreamResponse:
        try:
            resp = await forward(request, session, model_url, "v1/stream")
        except BaseException as exc:
            ended.set_result(exc)
            raise
        ended.set_result(None)
        return resp

    runners = []
    for handler in (stream, proxy):
        app = web.Application()
        app.router.add_get("/{tail:.*}", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
    model_url = f"http://127.0.0.1:{runners[0].addresses[0][1]}"
    proxy_url = f"http://127.0.0.1:{runners[1].addresses[0][1]}"
    try:
        async with aiohttp.ClientSession() as session:
            async with aiohttp.ClientSession() as client:
                resp = await client.get(f"{proxy_url}/v1/stream")
                with anyio.fail_after(10):
                    assert await resp.content.readline() == b"data: first\n"
                resp.close()  # hang up with the stream still open
            release.set()
            with anyio.fail_after(10):
                assert await ended is None
    finally:
        for runner in runners:
            await runner.cleanup()
