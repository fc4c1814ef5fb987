"""A streamed completion through the API server's service proxy: nothing on the way cuts it.

The proxy is the test cluster's (the same upstream Go handler kube-apiserver serves
``services/proxy`` with); the model is a small server of this test's own that records
how each request's body came.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from _testcluster import fresh_cluster
from aiohttp import web

from orchestrator.clients import NAMESPACES, SERVICES, InferenceClient, InferenceRoute, KubeClient

pytestmark = [pytest.mark.anyio, pytest.mark.cluster]

MODEL = "stub-model"
NS = "proxied"


def sse(choices: list[dict[str, Any]], **extra: Any) -> bytes:
    chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": MODEL}
    return f"data: {json.dumps({**chunk, 'choices': choices, **extra})}\n\n".encode()


@dataclass
class Served:
    transfer_encoding: str | None
    content_length: str | None


@dataclass
class Model:
    """Streams three words and ``[DONE]``."""

    served: list[Served] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        served = Served(
            request.headers.get("Transfer-Encoding"), request.headers.get("Content-Length")
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
        await response.write_eof()
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


async def test_a_streamed_completion_through_the_service_proxy_is_not_cut(
    model: tuple[Model, str],
) -> None:
    stub, url = model
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
