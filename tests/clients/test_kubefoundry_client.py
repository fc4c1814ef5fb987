"""The KubeFoundry client: retries only flakes, maps statuses to errors, names bad fields."""

import json

import httpx
import pytest

from orchestrator.clients import (
    Conflict,
    KubeFoundryClient,
    NotFound,
    ResponseFormatError,
    RetryPolicy,
    ServerError,
    TransportError,
    Unauthorized,
)

FAST = RetryPolicy(attempts=4, initial=0.001, maximum=0.005, max_elapsed=5)

STATUS = {
    "name": "d",
    "namespace": "ns",
    "phase": "Running",
    "replicas": {"desired": 1, "ready": 1, "available": 1},
    "conditions": [],
}


def client(handler, **kwargs) -> KubeFoundryClient:
    return KubeFoundryClient(
        "http://backend.test", transport=httpx.MockTransport(handler), retry=FAST, **kwargs
    )


@pytest.mark.anyio
async def test_503_three_times_then_success_is_retried() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) <= 3:
            return httpx.Response(503, json={"error": {"message": "warming up", "statusCode": 503}})
        return httpx.Response(200, json=STATUS)

    async with client(handler) as api:
        st = await api.get_deployment("d", "ns")
    assert st.phase == "Running" and len(calls) == 4
    assert calls[0].url.params["namespace"] == "ns"


@pytest.mark.anyio
async def test_persistent_5xx_gives_up_with_the_servers_message() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500, json={"error": {"message": "helm exploded", "statusCode": 500}})

    async with client(handler) as api:
        with pytest.raises(ServerError, match="helm exploded") as err:
            await api.provider_status("kaito")
    assert err.value.status == 500
    assert len(api.journal.entries) == FAST.attempts


@pytest.mark.anyio
@pytest.mark.parametrize(
    "status, exc", [(400, None), (401, Unauthorized), (404, NotFound), (409, Conflict)]
)
async def test_4xx_is_an_answer_and_never_retried(status: int, exc) -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(
            status, json={"error": {"message": f"nope {status}", "statusCode": status}}
        )

    async with client(handler) as api:
        with pytest.raises(exc or Exception, match=f"nope {status}") as err:
            await api.create_deployment({"name": "d"})
    assert len(calls) == 1
    assert getattr(err.value, "status", None) == status


@pytest.mark.anyio
async def test_connection_errors_are_retried_then_raised_as_transport_errors() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    async with client(handler) as api:
        with pytest.raises(TransportError, match="ConnectError"):
            await api.health()
    assert len(api.journal.entries) == FAST.attempts


@pytest.mark.anyio
async def test_wrong_shape_names_every_field() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, json={"name": "d", "namespace": "ns", "replicas": {"desired": "one"}}
        )

    async with client(handler) as api:
        with pytest.raises(ResponseFormatError) as err:
            await api.get_deployment("d", "ns")
    msg = str(err.value)
    assert "phase: Field required" in msg
    assert "replicas.desired" in msg and "replicas.ready: Field required" in msg


@pytest.mark.anyio
async def test_invalid_json_is_a_format_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="<html>oops</html>")

    async with client(handler) as api:
        with pytest.raises(ResponseFormatError, match=r"\(body\)"):
            await api.provider_status("kaito")


@pytest.mark.anyio
async def test_token_is_sent_but_never_journaled() -> None:
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(200, json={"status": "healthy"})

    async with client(handler, token="tok-123-secret") as api:
        await api.health()
        journal = json.dumps(api.journal.to_list())
    assert seen == ["Bearer tok-123-secret"]
    assert "tok-123-secret" not in journal


@pytest.mark.anyio
async def test_catalog_id_keeps_its_colon_and_install_force_flag() -> None:
    paths = []

    def handler(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.raw_path.decode())
        if "aikit" in request.url.path:
            return httpx.Response(
                200, json={"id": "llama3.2:1b", "modelName": "llama-3.2-1b-instruct"}
            )
        return httpx.Response(200, json={"success": True, "message": "ok", "installing": True})

    async with client(handler) as api:
        entry = await api.catalog_model("llama3.2:1b")
        await api.install_provider("kaito", force=True)
    assert entry.model_name == "llama-3.2-1b-instruct"
    assert paths == [
        "/api/aikit/models/llama3.2:1b",
        "/api/installation/providers/kaito/install?force=true",
    ]


@pytest.mark.anyio
async def test_install_500_is_a_failed_step_and_not_retried_but_503_is() -> None:
    answers = iter([503, 500])
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        status = next(answers)
        return httpx.Response(
            status, json={"error": {"message": f"step failed {status}", "statusCode": status}}
        )

    async with client(handler) as api:
        with pytest.raises(ServerError, match="step failed 500"):
            await api.install_provider("kaito")
    assert len(calls) == 2


@pytest.mark.anyio
async def test_a_retry_line_names_the_route_once() -> None:
    """The line a person reads while a call is retried: route, what happened, when next."""
    lines: list[str] = []
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) == 1:
            raise httpx.ConnectError("connection refused", request=request)
        if len(calls) == 2:
            return httpx.Response(503, json={"error": {"message": "warming up"}})
        return httpx.Response(200, json={"status": "healthy"})

    async with client(handler, on_retry=lines.append) as api:
        await api.health()
    assert len(lines) == 2
    for line in lines:
        assert line.startswith("GET /api/health") and line.count("/api/health") == 1, line
        assert " retrying in " in line
    assert "connection refused" in lines[0] and "warming up" in lines[1]
