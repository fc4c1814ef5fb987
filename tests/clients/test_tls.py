"""Which clients get the shared TLS context: those that may open a TLS connection."""

from __future__ import annotations

import pytest

from orchestrator.clients import InferenceClient, InferenceRoute, KubeFoundryClient
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
