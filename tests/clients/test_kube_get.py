"""A Kubernetes read's first try goes straight to the ApiClient's aiohttp session.

That lean try is a boundary for a peer's bytes of its own, so it is held to what the
rest of the client promises: whatever a peer answers, a read gives a checked object or
a :class:`ClientError` naming the route, with no credential in it; the Authorization
header is the ApiClient's (a refreshed token included); a flake, and only a flake,
goes on to the retry policy; every try is counted.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.clients import (
    PODS,
    ClientError,
    KubeClient,
    NotFound,
    ResponseFormatError,
    RetryPolicy,
    ServerError,
)
from orchestrator.clients.kube import check_object

pytestmark = pytest.mark.anyio
TOKEN = "s3cr3t-token"
ROUTE = "GET /api/v1/namespaces/ns/pods/p"
NO_RETRY = RetryPolicy(attempts=1)
POD = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "ns"}}


@dataclass
class Peer:
    """An HTTP server that answers each request with the next of ``answers`` (the last
    one again when they run out) and records what it was sent."""

    answers: list[Callable[[], web.StreamResponse]] = field(default_factory=list)
    seen: list[web.BaseRequest] = field(default_factory=list)
    port: int = 0

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        self.seen.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return answer()

    def kubeconfig(self, path: Path) -> str:
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {"name": "c", "cluster": {"server": f"http://127.0.0.1:{self.port}"}}
                    ],
                    "users": [{"name": "u", "user": {"token": TOKEN}}],
                    "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                    "current-context": "x",
                }
            )
        )
        return str(path)


async def _serve(peer: Peer) -> web.AppRunner:
    runner = web.AppRunner(web.Application(handler_args={}), handle_signals=False)
    runner.app.router.add_route("*", "/{tail:.*}", peer.handle)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    peer.port = runner.addresses[0][1]
    return runner


@pytest.fixture
async def peer() -> AsyncIterator[Peer]:
    p = Peer()
    runner = await _serve(p)
    try:
        yield p
    finally:
        await runner.cleanup()


@pytest.fixture
async def kube(peer: Peer, tmp_path: Path) -> AsyncIterator[KubeClient]:
    client = await KubeClient.from_kubeconfig(peer.kubeconfig(tmp_path / "kubeconfig"))
    try:
        yield client
    finally:
        await client.aclose()


def json_answer(status: int, body: Any, **headers: str) -> Callable[[], web.StreamResponse]:
    return lambda: web.Response(status=status, body=json.dumps(body).encode(), headers=headers)


async def test_a_read_sends_the_apiclients_headers_and_counts_itself(
    peer: Peer, kube: KubeClient
) -> None:
    peer.answers = [json_answer(200, POD)]
    got = await kube.get(PODS, "p", "ns", not_older_than="42")
    assert got == POD
    request = peer.seen[-1]
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["User-Agent"] == kube._api.user_agent
    assert request.path_qs == "/api/v1/namespaces/ns/pods/p?resourceVersion=42"
    assert kube.requests_sent == 1


async def test_a_refreshed_token_is_the_one_sent(peer: Peer, kube: KubeClient) -> None:
    # The ApiClient asks the configuration's refresh hook before every request (an
    # in-cluster token file, a credential plugin's expiring token): so does a read.
    refreshed: list[str] = []

    def refresh(configuration: Any) -> None:
        refreshed.append(f"token-{len(refreshed)}")
        configuration.api_key["BearerToken"] = f"Bearer {refreshed[-1]}"

    kube._api.configuration.refresh_api_key_hook = refresh
    peer.answers = [json_answer(200, POD)]
    await kube.get(PODS, "p", "ns")
    await kube.list(PODS, "ns")
    assert [r.headers["Authorization"] for r in peer.seen] == ["Bearer token-0", "Bearer token-1"]


async def test_a_token_rotated_between_reads_of_one_object_is_the_one_sent(
    peer: Peer, kube: KubeClient
) -> None:
    # The lean path keeps a read's header fields from one read to the next: never past
    # a change of what they were made from (the token, a default header, the cookie).
    tokens = iter(["a", "a", "b", "b", "b", "b"])

    def refresh(configuration: Any) -> None:
        configuration.api_key["BearerToken"] = f"Bearer {next(tokens)}"

    kube._api.configuration.refresh_api_key_hook = refresh
    peer.answers = [json_answer(200, POD)]
    await kube.get(PODS, "p", "ns", not_older_than="1")
    await kube.get(PODS, "p", "ns", not_older_than="2")
    await kube.get(PODS, "p", "ns", not_older_than="3")
    kube._api.set_default_header("X-Extra", "1")
    await kube.get(PODS, "p", "ns", not_older_than="4")
    kube._api.cookie = "c=1"
    await kube.get(PODS, "p", "ns", not_older_than="5")
    await kube.get(PODS, "p", "ns")
    assert kube._lean is not None and kube._lean.opened == 1  # every read went lean
    seen = [
        (r.path_qs, r.headers["Authorization"], r.headers.get("X-Extra"), r.headers.get("Cookie"))
        for r in peer.seen
    ]
    path = "/api/v1/namespaces/ns/pods/p"
    assert seen == [
        (f"{path}?resourceVersion=1", "Bearer a", None, None),
        (f"{path}?resourceVersion=2", "Bearer a", None, None),
        (f"{path}?resourceVersion=3", "Bearer b", None, None),
        (f"{path}?resourceVersion=4", "Bearer b", "1", None),
        (f"{path}?resourceVersion=5", "Bearer b", "1", "c=1"),
        (path, "Bearer b", "1", "c=1"),
    ]


async def test_only_a_flake_goes_on_to_the_retry_policy(peer: Peer, kube: KubeClient) -> None:
    peer.answers = [json_answer(503, {"message": "etcd leader changed"}), json_answer(200, POD)]
    with anyio.fail_after(20):
        assert await kube.get(PODS, "p", "ns") == POD
    assert kube.requests_sent == 2

    peer.answers = [json_answer(404, {"kind": "Status", "message": 'pods "p" not found'})]
    with pytest.raises(NotFound) as gone:
        await kube.get(PODS, "p", "ns")
    assert gone.value.message == 'pods "p" not found'
    assert kube.requests_sent == 3  # an answer: asked once

    peer.answers = [json_answer(503, {"message": "still down"})]
    with pytest.raises(ServerError) as down:
        await kube.get(PODS, "p", "ns", retry=NO_RETRY)
    assert down.value.message == "still down" and kube.requests_sent == 4


async def test_a_2xx_that_is_not_an_object_is_a_format_error(peer: Peer, kube: KubeClient) -> None:
    for body in (b"", b"[1, 2]", b"not json", b'{"metadata": "a string"}'):
        peer.answers = [lambda body=body: web.Response(status=200, body=body)]
        with pytest.raises(ResponseFormatError) as err:
            await kube.get(PODS, "p", "ns", retry=NO_RETRY)
        assert ROUTE in str(err.value)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3)
    ),
    max_leaves=12,
)
bodies = (
    st.binary(max_size=200)
    | json_values.map(lambda v: json.dumps(v).encode())
    | st.builds(
        lambda meta, status: json.dumps({"metadata": meta, "status": status}).encode(),
        json_values,
        json_values,
    )
    | st.just(f'{{"message": "Authorization: Bearer {TOKEN}"}}'.encode())
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    status=st.sampled_from([200, 201, 204, 301, 400, 401, 403, 404, 409, 410, 429, 500, 503]),
    body=bodies,
    retry_after=st.none() | st.sampled_from(["1", "x", "-5", "Wed, 21 Oct 2015 07:28:00 GMT"]),
)
def test_any_answer_to_a_read_is_an_object_or_a_client_error(
    tmp_path_factory: pytest.TempPathFactory, status: int, body: bytes, retry_after: str | None
) -> None:
    async def main() -> None:
        headers = {"Retry-After": retry_after} if retry_after else {}
        peer = Peer([lambda: web.Response(status=status, body=body, headers=headers)])
        runner = await _serve(peer)
        kube = await KubeClient.from_kubeconfig(peer.kubeconfig(tmp_path_factory.mktemp("k") / "c"))
        try:
            try:
                got = await kube.get(PODS, "p", "ns", retry=NO_RETRY)
            except ClientError as exc:
                assert TOKEN not in str(exc)
                assert "/api/v1/namespaces/ns/pods/p" in str(exc)
            else:
                assert 200 <= status < 300
                assert check_object(got, ROUTE) is got
        finally:
            await kube.aclose()
            await runner.cleanup()

    anyio.run(main)
