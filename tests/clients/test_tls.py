"""Which clients load a CA bundle: only those that may open a TLS connection."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from orchestrator.clients import InferenceClient, InferenceRoute, KubeClient, KubeFoundryClient
from orchestrator.clients._tls import context_for, default_context

PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY")


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARIABLES + ("ALL_PROXY",):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("no_proxy_env")
def test_a_plain_http_peer_reached_directly_gets_no_context() -> None:
    assert context_for("http://localhost:3001") is None
    assert context_for("HTTP://127.0.0.1:8080/base") is None


@pytest.mark.usefixtures("no_proxy_env")
def test_an_https_peer_gets_the_one_shared_verifying_context() -> None:
    context = context_for("https://kubefoundry.example")
    assert context is default_context()
    assert context is not None and context.check_hostname


@pytest.mark.usefixtures("no_proxy_env")
@pytest.mark.parametrize("variable", ["HTTPS_PROXY", "http_proxy"])
def test_a_proxy_from_the_environment_gets_the_context_even_for_http(
    monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.setenv(variable, "https://proxy.example:3128")
    assert context_for("http://localhost:3001") is default_context()


@pytest.mark.usefixtures("no_proxy_env")
@pytest.mark.parametrize("variable", ["NO_PROXY", "no_proxy"])
def test_a_no_proxy_list_alone_is_no_proxy(monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    # CI sets NO_PROXY on machines with no proxy at all; the standard library lists it
    # among the proxies as "no".
    monkeypatch.setenv(variable, "localhost,127.0.0.1")
    assert context_for("http://localhost:3001") is None


@pytest.mark.anyio
@pytest.mark.usefixtures("no_proxy_env")
async def test_the_service_proxy_route_makes_no_http_client() -> None:
    client = InferenceClient(InferenceRoute("service-proxy"))
    await client.aclose()
    assert client._httpx is None  # httpx builds a TLS context with it


@pytest.mark.anyio
@pytest.mark.usefixtures("no_proxy_env")
async def test_a_plain_http_backend_client_verifies_nothing_it_never_uses() -> None:
    api = KubeFoundryClient("http://localhost:3001")
    await api.aclose()
    assert api._http._transport._ssl is None  # type: ignore[attr-defined]


def kubeconfig(tmp_path: Path, server: str) -> str:
    path = tmp_path / "kubeconfig"
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        f"clusters: [{{name: k, cluster: {{server: '{server}'}}}}]\n"
        "users: [{name: u, user: {token: abcdef123456}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\n"
    )
    return str(path)


def cas_trusted(kube: KubeClient) -> int:
    context = kube._api.rest_client.pool_manager.connector._ssl
    return int(context.cert_store_stats()["x509_ca"])


@pytest.mark.anyio
@pytest.mark.usefixtures("no_proxy_env")
async def test_a_plain_http_cluster_client_loads_no_ca_bundle(tmp_path: Path) -> None:
    from kubernetes_asyncio.client import rest

    kube = await KubeClient.from_kubeconfig(kubeconfig(tmp_path, "http://127.0.0.1:1"))
    try:
        assert cas_trusted(kube) == 0
        context = kube._api.rest_client.pool_manager.connector._ssl
        assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    finally:
        await kube.aclose()
    assert rest.ssl is ssl  # the REST client's module is itself again


@pytest.mark.anyio
@pytest.mark.usefixtures("no_proxy_env")
async def test_an_https_cluster_client_still_trusts_the_system_cas(tmp_path: Path) -> None:
    kube = await KubeClient.from_kubeconfig(kubeconfig(tmp_path, "https://127.0.0.1:1"))
    try:
        assert cas_trusted(kube) == default_context().cert_store_stats()["x509_ca"] > 0
    finally:
        await kube.aclose()


@pytest.mark.anyio
@pytest.mark.usefixtures("no_proxy_env")
async def test_a_plain_http_cluster_behind_a_proxy_keeps_the_ca_bundle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "https://proxy.example:3128")
    kube = await KubeClient.from_kubeconfig(kubeconfig(tmp_path, "http://127.0.0.1:1"))
    try:
        assert cas_trusted(kube) > 0
    finally:
        await kube.aclose()


def http_context(client: InferenceClient) -> ssl.SSLContext:
    """The context the inference client's own transport (``AiohttpTransport``, as the
    backend client's) would open TLS with."""
    context = client._http._transport._ssl  # type: ignore[attr-defined]
    assert isinstance(context, ssl.SSLContext)
    return context


@pytest.mark.anyio
@pytest.mark.usefixtures("no_proxy_env")
@pytest.mark.parametrize(
    "route", [InferenceRoute("url", "http://127.0.0.1:8080"), InferenceRoute("backend-proxy")]
)
async def test_a_plain_http_inference_client_loads_no_ca_bundle(route: InferenceRoute) -> None:
    client = InferenceClient(route, backend_url="http://localhost:3001", token="t")
    try:
        context = http_context(client)
        assert context.cert_store_stats()["x509_ca"] == 0
        assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    finally:
        await client.aclose()


@pytest.mark.anyio
@pytest.mark.usefixtures("no_proxy_env")
@pytest.mark.parametrize(
    "route",
    [InferenceRoute("url", "https://model.example"), InferenceRoute("backend-proxy")],
)
async def test_an_https_inference_client_keeps_the_shared_context(route: InferenceRoute) -> None:
    client = InferenceClient(route, backend_url="https://kubefoundry.example", token="t")
    try:
        assert http_context(client) is default_context()
    finally:
        await client.aclose()


@pytest.mark.anyio
@pytest.mark.usefixtures("no_proxy_env")
async def test_a_plain_http_inference_client_behind_a_proxy_keeps_the_context(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "https://proxy.example:3128")
    client = InferenceClient(InferenceRoute("url", "http://127.0.0.1:8080"))
    try:
        assert http_context(client) is default_context()
    finally:
        await client.aclose()


@pytest.mark.anyio
@pytest.mark.usefixtures("no_proxy_env")
async def test_a_plain_http_model_is_still_reached_without_the_ca_bundle() -> None:
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    async def completions(request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response(
            {
                "id": "c",
                "object": "chat.completion",
                "created": 1,
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "Hello"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
            }
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    async with TestServer(app, host="127.0.0.1") as server:
        route = InferenceRoute("url", f"http://127.0.0.1:{server.port}")
        client = InferenceClient(route)
        try:
            result = await client.chat(
                namespace="ns", service="svc", port=80, model="m", prompt="hi", max_tokens=8
            )
            assert result.content == "Hello"
            assert http_context(client).cert_store_stats()["x509_ca"] == 0
        finally:
            await client.aclose()
