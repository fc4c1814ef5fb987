"""A streamed completion through the API server's service proxy: nothing on the way cuts it.

The proxy is the test cluster's (the same upstream Go handler kube-apiserver serves
``services/proxy`` with); the model is a small server of this test's own that records,
for every request, how its body came, on which connection, and whether the end of its
own answer landed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from _testcluster import fresh_cluster
from aiohttp import web

import orchestrator.clients.inference as inference_module
from orchestrator.clients import NAMESPACES, SERVICES, InferenceClient, InferenceRoute, KubeClient

pytestmark = [pytest.mark.anyio, pytest.mark.cluster]

MODEL = "stub-model"
NS = "proxied"
#: How long after ``[DONE]`` the model ends its body: a "little later", by which a client
#: that stopped reading at ``[DONE]`` has hung up.
END_AFTER = 0.2


def sse(choices: list[dict[str, Any]], **extra: Any) -> bytes:
    chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": MODEL}
    return f"data: {json.dumps({**chunk, 'choices': choices, **extra})}\n\n".encode()


@dataclass
class Served:
    transfer_encoding: str | None
    content_length: str | None
    peer_port: int
    end: str = "not written"


@dataclass
class Model:
    """Streams three words and ``[DONE]``, and ends its body a little later."""

    served: list[Served] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        served = Served(
            request.headers.get("Transfer-Encoding"),
            request.headers.get("Content-Length"),
            peer[1] if peer else 0,
        )
        self.served.append(served)
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        words = ["Hello", " there", "."]
        for i, word in enumerate(words):
            delta = {"role": "assistant", "content": word} if i == 0 else {"content": word}
            finish = "stop" if i == len(words) - 1 else None
            await response.write(sse([{"index": 0, "delta": delta, "finish_reason": finish}]))
        usage = {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}
        await response.write(sse([], usage=usage))
        await response.write(b"data: [DONE]\n\n")
        await asyncio.sleep(END_AFTER)  # the model's own pace, not a wait for anything
        try:
            await response.write_eof()
            served.end = "written"
        except ConnectionError as exc:
            served.end = f"{type(exc).__name__}: {exc}"
        return response


@pytest.fixture
async def model() -> AsyncIterator[tuple[Model, str]]:
    stub = Model()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", stub.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield stub, f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def test_a_streamed_completion_through_the_service_proxy_is_neither_cut_nor_cuts(
    model: tuple[Model, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    stub, url = model
    # However slow the machine, the client waits for the body's end far longer than the
    # model takes to send it.
    monkeypatch.setattr(inference_module, "DRAIN_SECONDS", 60.0)
    with fresh_cluster() as cluster:
        kube = await KubeClient.from_kubeconfig(str(cluster.kubeconfig))
        client = InferenceClient(InferenceRoute("service-proxy"), kube=kube, request_timeout=60)
        try:
            await kube.create(NAMESPACES, {"metadata": {"name": NS}})
            service = {
                "metadata": {"name": "model", "annotations": {"fake-kubelet/proxy-to": url}},
                "spec": {"ports": [{"port": 80}]},
            }
            await kube.create(SERVICES, service, NS)
            results = [
                await client.complete(
                    namespace=NS, service="model", port=80, model=MODEL, prompt="hi", max_tokens=8
                )
                for _ in range(2)
            ]
        finally:
            await client.aclose()
            await kube.aclose()
    assert [r.attempts for r in results] == [1, 1]
    assert all(r.content == "Hello there." for r in results), results
    # The body goes chunked: a Content-Length body is read once more by the proxy after it
    # has forwarded it, and when the model's answer has begun by then, that read fails and
    # the proxy drops the model's connection, cutting the answer mid-stream.
    assert [(s.transfer_encoding, s.content_length) for s in stub.served] == [("chunked", None)] * 2
    # After [DONE] the client read the body to its end: the model's last write landed, and
    # the proxy, having read that body to its end too, kept its connection to the model
    # and sent the next request on it.
    assert [s.end for s in stub.served] == ["written", "written"], stub.served
    assert stub.served[0].peer_port == stub.served[1].peer_port, stub.served
