"""Every parser of a peer's bytes, fed arbitrary bytes and arbitrary JSON (hypothesis).

The property is the boundary: whatever arrives, a parser gives a typed value or a
:class:`ClientError` (a :class:`ProtocolError` for bytes that break the protocol) that
names the route; nothing else escapes, and no excerpt shows a bearer value.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import httpx
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from orchestrator.clients import (
    ClientError,
    InferenceClient,
    InferenceRoute,
    KubeFoundryClient,
    ProtocolError,
    RetryPolicy,
    validate_completion,
)
from orchestrator.clients import _models as m
from orchestrator.clients._errors import excerpt, redact
from orchestrator.clients.inference import _collect, _Seen, _sse_chunks, parse_sse_data
from orchestrator.clients.kube import check_list, check_object, parse_watch_line
from orchestrator.clients.kubefoundry import parse

ROUTE = "WATCH /api/v1/namespaces/ns/pods"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)
#: JSON that looks like what a server sends, with a wrong part somewhere.
metadata = st.fixed_dictionaries(
    {},
    optional={
        "name": json_values,
        "namespace": json_values,
        "resourceVersion": json_values,
        "labels": json_values | st.dictionaries(st.text(max_size=5), st.text(max_size=5)),
    },
)
k8s_objects = st.fixed_dictionaries(
    {}, optional={"metadata": metadata | json_values, "spec": json_values, "status": json_values}
)
watch_events = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"])
        | json_values,
        "object": k8s_objects | json_values,
    },
)
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _only_typed(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except ClientError as exc:
        assert str(exc)  # says something
        return exc


@FAST
@given(st.binary(max_size=300))
def test_a_watch_line_of_arbitrary_bytes_is_an_event_or_a_protocol_error(line: bytes) -> None:
    out = _only_typed(parse_watch_line, line, ROUTE)
    if isinstance(out, ClientError):
        assert isinstance(out, ProtocolError) and out.route == ROUTE and ROUTE in str(out)


@FAST
@given(watch_events | json_values)
def test_a_watch_line_of_arbitrary_json_is_an_event_or_a_protocol_error(value: Any) -> None:
    out = _only_typed(parse_watch_line, json.dumps(value).encode(), ROUTE)
    if not isinstance(out, ClientError) and out.type not in ("ERROR", "BOOKMARK"):
        # Whatever passed can be read the way every consumer reads it.
        meta = out.object["metadata"]
        assert isinstance(meta, dict)
        assert isinstance(meta.get("labels") or {}, dict)
        assert isinstance(out.name, str)
        assert isinstance(out.object.get("status") or {}, dict)


@FAST
@given(
    st.fixed_dictionaries(
        {}, optional={"metadata": json_values, "items": st.lists(k8s_objects) | json_values}
    )
    | json_values
)
def test_a_list_answer_is_a_list_or_a_format_error(value: Any) -> None:
    out = _only_typed(check_list, value, "GET /api/v1/pods")
    if not isinstance(out, ClientError):
        assert all(isinstance(check_object(i, "x"), dict) for i in out["items"])


MODELS = [
    m.Health,
    m.ClusterStatus,
    m.ProviderStatus,
    m.InstallResult,
    m.CatalogModel,
    m.Created,
    m.DeploymentStatus,
    m.Deleted,
    m.DeploymentPods,
]


@FAST
@given(st.sampled_from(MODELS), json_values | st.dictionaries(st.text(max_size=12), json_values))
def test_a_backend_body_is_a_model_or_a_format_error(model: Any, value: Any) -> None:
    out = _only_typed(parse, model, value, "GET /api/x")
    assert isinstance(out, model | ClientError)


def _backend_calls(api: KubeFoundryClient) -> list[Any]:
    return [
        api.health(),
        api.cluster_status(),
        api.provider_status("kaito"),
        api.install_provider("kaito"),
        api.catalog_model("llama3.2:1b"),
        api.create_deployment({"name": "x"}),
        api.get_deployment("x", "ns"),
        api.delete_deployment("x", "ns"),
        api.deployment_pods("x", "ns"),
    ]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    status=st.sampled_from([200, 201, 400, 401, 404, 409, 429, 500, 503]),
    body=st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()),
    retry_after=st.none() | st.text(max_size=8),
)
def test_every_backend_route_answers_a_model_or_a_client_error(
    status: int, body: bytes, retry_after: str | None
) -> None:
    headers = {"Retry-After": retry_after} if retry_after and retry_after.isprintable() else {}

    def answer(request: httpx.Request) -> httpx.Response:
        try:
            return httpx.Response(status, content=body, headers=headers)
        except (ValueError, UnicodeEncodeError):
            return httpx.Response(status, content=body)

    async def main() -> None:
        api = KubeFoundryClient(
            "http://backend.invalid",
            token="s3cr3t-token",
            transport=httpx.MockTransport(answer),
            retry=RetryPolicy(attempts=1),
        )
        try:
            for call in _backend_calls(api):
                try:
                    await call
                except ClientError as exc:
                    assert "s3cr3t-token" not in str(exc)
        finally:
            await api.aclose()

    anyio.run(main)


@FAST
@given(json_values | st.dictionaries(st.text(max_size=12), json_values))
def test_validate_completion_judges_any_json_without_raising(value: Any) -> None:
    parsed, errors = validate_completion(value)
    assert (parsed is None) == bool(errors)


@FAST
@given(st.text(max_size=200) | json_values.map(json.dumps))
def test_an_sse_payload_is_a_chunk_done_or_invalid(data: str) -> None:
    out = _only_typed(parse_sse_data, data, "POST /v1/chat/completions")
    if isinstance(out, dict):
        for choice in out.get("choices") or []:
            assert isinstance((choice.get("delta") or {}).get("content") or "", str)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(max_size=80), max_size=8))
def test_an_sse_stream_of_arbitrary_bytes_is_measured_or_invalid(pieces: list[bytes]) -> None:
    async def main() -> None:
        async def feed() -> Any:
            for piece in pieces:
                yield piece

        try:
            await _collect(_sse_chunks(feed(), _Seen(), "POST /v1/chat"), 0.0, "POST /v1/chat")
        except ClientError:
            pass

    anyio.run(main)


@settings(max_examples=60, deadline=None)
@given(
    status=st.sampled_from([200, 400, 404, 500]),
    body=st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()),
    content_type=st.sampled_from(["application/json", "text/event-stream"]),
)
def test_a_completion_answer_is_a_result_or_a_client_error(
    status: int, body: bytes, content_type: str
) -> None:
    async def main() -> None:
        headers = {"Content-Type": content_type}
        client = InferenceClient(
            InferenceRoute("url", "http://model.invalid"),
            request_timeout=5,
            transport=httpx.MockTransport(
                lambda _r: httpx.Response(status, content=body, headers=headers)
            ),
        )
        try:
            for call in (
                client.chat(
                    namespace="ns",
                    service="s",
                    port=80,
                    model="m",
                    prompt="p",
                    max_tokens=4,
                    loading_grace=0,
                ),
                client.complete(
                    namespace="ns",
                    service="s",
                    port=80,
                    model="m",
                    prompt="p",
                    max_tokens=4,
                    loading_grace=0,
                ),
            ):
                try:
                    await call
                except ClientError:
                    pass
        finally:
            await client.aclose()

    anyio.run(main)


TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._-", min_size=8, max_size=40)


@FAST
@given(
    TOKEN,
    st.text(max_size=60),
    st.text(max_size=60),
    st.sampled_from(
        [
            "Authorization: Bearer {t}",
            '{{"authorization": "Bearer {t}"}}',
            "bearer {t}",
            "Authorization={t}",
        ]
    ),
)
def test_an_excerpt_never_shows_an_authorization_value(
    token: str, before: str, after: str, form: str
) -> None:
    assume(token not in before + after)
    text = before + form.format(t=token) + after
    assert token not in redact(text)
    for limit in (10, 40, 160):
        assert token not in excerpt(before.encode() + form.format(t=token).encode(), limit)


@pytest.mark.parametrize(
    "echo",
    [b"Authorization: Bearer s3cr3t-token", b'{"error": {"message": "bad token s3cr3t-token"}}'],
)
def test_a_backend_that_echoes_the_token_is_quoted_masked(echo: bytes) -> None:
    async def main() -> None:
        api = KubeFoundryClient(
            "http://backend.invalid",
            token="s3cr3t-token",
            transport=httpx.MockTransport(lambda _r: httpx.Response(400, content=echo)),
        )
        try:
            with pytest.raises(ClientError) as err:
                await api.health()
            assert "s3cr3t-token" not in str(err.value)
        finally:
            await api.aclose()

    anyio.run(main)
