"""The KubeFoundry client against the exchanges recorded from the real backend.

The stand-in is replayed against the recordings in tests/sandbox; this holds the
*client* to them: each route the client speaks sends exactly the recorded request
(method, path, query, body) and reads the recorded answer into the right model or
error. Every recording is either spoken here or listed as a route the client never
uses, so a new recording forces a decision.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.clients import (
    Conflict,
    HTTPStatusError,
    KubeFoundryClient,
    NotFound,
    RetryPolicy,
    ServerError,
    Unauthorized,
)
from orchestrator.flows import Deployment
from orchestrator.flows.kaito import KaitoProfile

pytestmark = pytest.mark.anyio

#: Retries fast, and would retry a 5xx many times: a test that sees one request knows
#: the client chose not to retry, not that it ran out of tries.
RETRYING = RetryPolicy(attempts=6, initial=0.001, maximum=0.002, max_elapsed=5)
NAME, NS = "integration-test-llama", "kaito-workspace"
FLOW_BODY = KaitoProfile().create_body(Deployment(NAME, NS, "llama3.2:1b"))

#: Recorded routes the client has no method for (the flow never calls them).
NOT_SPOKEN = {
    "03-helm-status.json",
    "09-aikit-models.json",
    "12-deployment-preview.json",
    "22-deployments-list-pending.json",
    "23-deployments-list-all-namespaces.json",
    "24-deployments-list-bad-namespace.json",
    "27-deployment-manifest.json",
    "29-deployment-logs-no-pods.json",
    "34-deployments-list-running.json",
    "35-deployment-logs.json",
    "36-deployment-logs-tail-timestamps.json",
    "37-deployment-logs-foreign-pod.json",
    "38-deployment-pending-reasons.json",
    "39-deployment-metrics.json",
    "40-runtimes-status.json",
    "44-deployments-list-after-delete.json",
    "45-unknown-api-route.json",
    "46-non-api-route-no-frontend.json",
    "47-settings.json",
    "50-auth-settings-public.json",
}


def _directory() -> Path:
    value = os.environ.get("KUBEFOUNDRY_CONTRACT_DIR")
    if not value:
        pytest.skip("KUBEFOUNDRY_CONTRACT_DIR is not set: no recorded KubeFoundry exchanges")
    return Path(value)


def _record(name: str) -> dict[str, Any]:
    return json.loads((_directory() / name).read_text())  # type: ignore[no-any-return]


class Replay:
    """A transport that answers every request with one recording, and keeps the requests."""

    def __init__(self, record: dict[str, Any]) -> None:
        self.record = record
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        body = self.record["responseBody"]
        content = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        return httpx.Response(
            self.record["status"],
            content=content,
            headers={"Content-Type": self.record["responseContentType"]},
        )


async def _replay(
    name: str, call: Callable[[KubeFoundryClient], Awaitable[Any]], **client: Any
) -> tuple[Replay, Any]:
    replay = Replay(_record(name))
    api = KubeFoundryClient(
        "http://backend.test",
        transport=httpx.MockTransport(replay),
        retry=RETRYING,
        **client,
    )
    async with api:
        try:
            result: Any = await call(api)
        except HTTPStatusError as exc:
            result = exc
    return replay, result


def _sent_as_recorded(replay: Replay) -> None:
    """The request the client sent is the recorded one: method, path and query, body."""
    record, sent = replay.record, replay.requests[0]
    assert sent.method == record["method"]
    target = sent.url.raw_path.decode()
    assert target == record["path"], (target, record["path"])
    if isinstance(record["requestBody"], dict):
        assert json.loads(sent.content) == record["requestBody"]
        assert sent.headers["Content-Type"] == "application/json"


SPOKEN: dict[str, Callable[[KubeFoundryClient], Awaitable[Any]]] = {
    "01-health.json": lambda api: api.health(),
    "02-cluster-status.json": lambda api: api.cluster_status(),
    "04-kaito-status-before.json": lambda api: api.provider_status("kaito"),
    "05-kaito-install.json": lambda api: api.install_provider("kaito"),
    "06-kaito-status-after.json": lambda api: api.provider_status("kaito"),
    "07-kaito-install-again.json": lambda api: api.install_provider("kaito"),
    "08-provider-status-unknown.json": lambda api: api.provider_status("nope"),
    "10-aikit-model-llama3.2-1b.json": lambda api: api.catalog_model("llama3.2:1b"),
    "11-aikit-model-unknown.json": lambda api: api.catalog_model("nope:1b"),
    "13-deployment-create.json": lambda api: api.create_deployment(FLOW_BODY),
    "14-deployment-create-duplicate.json": lambda api: api.create_deployment(FLOW_BODY),
    "25-deployment-get-pending.json": lambda api: api.get_deployment(NAME, NS),
    "26-deployment-get-bad-name.json": lambda api: api.get_deployment("Bad_Name", NS),
    "28-deployment-pods-none.json": lambda api: api.deployment_pods(NAME, NS),
    "30-deployment-pods-running.json": lambda api: api.deployment_pods(NAME, NS),
    "31-deployment-get-pod-running-no-status.json": lambda api: api.get_deployment(NAME, NS),
    "32-deployment-get-resource-ready-only.json": lambda api: api.get_deployment(NAME, NS),
    "33-deployment-get-running.json": lambda api: api.get_deployment(NAME, NS),
    "41-deployment-delete.json": lambda api: api.delete_deployment(NAME, NS),
    "42-deployment-get-after-delete.json": lambda api: api.get_deployment(NAME, NS),
    "43-deployment-delete-again.json": lambda api: api.delete_deployment(NAME, NS),
    "48-auth-health-public.json": lambda api: api.health(),
    "49-auth-cluster-status-public.json": lambda api: api.cluster_status(),
    "53-auth-kaito-status-no-token.json": lambda api: api.provider_status("kaito"),
}

#: Recorded create refusals: the flow's own body, changed as each recording changed it.
CREATE_REFUSALS = [
    "15-deployment-create-bad-name.json",
    "16-deployment-create-unknown-premade.json",
    "17-deployment-create-missing-provider.json",
    "18-deployment-create-replicas-zero.json",
    "19-deployment-create-missing-premade-model.json",
    "20-deployment-create-unknown-provider.json",
    "21-deployment-create-malformed-json.json",
    "52-auth-create-deployment-no-token.json",
]
#: Refusals of a route the client does not speak (the list), or sent with a header it
#: cannot be told to send (a Basic scheme): the answer only, read on a route it speaks.
ANSWER_ONLY = {
    "51-auth-deployments-no-token.json": lambda api: api.get_deployment(NAME, NS),
    "54-auth-non-bearer-scheme.json": lambda api: api.get_deployment(NAME, NS),
}


def test_every_recording_is_spoken_or_named_as_unused() -> None:
    recorded = {p.name for p in _directory().glob("*.json")}
    covered = set(SPOKEN) | set(CREATE_REFUSALS) | set(ANSWER_ONLY) | NOT_SPOKEN
    assert recorded - covered == set(), "recordings no test decides about"
    assert covered - recorded == set(), "tests of recordings that do not exist"


@pytest.mark.parametrize("name", sorted(SPOKEN))
async def test_the_client_sends_the_recorded_request_and_reads_the_answer(name: str) -> None:
    replay, result = await _replay(name, SPOKEN[name])
    record = replay.record
    assert len(replay.requests) == 1, "an answer the client retried"
    _sent_as_recorded(replay)
    if record["status"] >= 400:
        expected = {401: Unauthorized, 404: NotFound, 409: Conflict}.get(record["status"])
        assert isinstance(result, expected or HTTPStatusError), result
        assert result.status == record["status"]
        body = record["responseBody"]["error"]
        message = body.get("message") or body["issues"][0]["message"]
        assert result.message == message
        return
    # Every field the model declares reads back as the recording has it.
    dumped = result.model_dump(by_alias=True, exclude_unset=True)
    assert dumped == {k: v for k, v in record["responseBody"].items() if k in dumped}


async def test_the_recorded_answers_read_as_the_flow_needs_them() -> None:
    _, before = await _replay("04-kaito-status-before.json", SPOKEN["04-kaito-status-before.json"])
    assert (before.installed, before.crd_found, before.operator_running) == (False, False, False)
    _, started = await _replay("05-kaito-install.json", SPOKEN["05-kaito-install.json"])
    assert started.installing and not started.already_installed
    assert [r.success for r in started.results] == [True] * len(started.results)
    _, again = await _replay("07-kaito-install-again.json", SPOKEN["07-kaito-install-again.json"])
    assert again.already_installed
    _, entry = await _replay(
        "10-aikit-model-llama3.2-1b.json", SPOKEN["10-aikit-model-llama3.2-1b.json"]
    )
    _, running = await _replay(
        "33-deployment-get-running.json", SPOKEN["33-deployment-get-running.json"]
    )
    assert running.phase == "Running" and running.replicas.ready == 1
    # The name the model answers to: the catalog's modelName is the status's modelId.
    assert entry.model_name == running.model_id == "llama-3.2-1b-instruct"
    _, pods = await _replay(
        "30-deployment-pods-running.json", SPOKEN["30-deployment-pods-running.json"]
    )
    assert [(p.name, p.phase, p.ready) for p in pods.pods] == [(f"{NAME}-0", "Running", True)]


@pytest.mark.parametrize("name", CREATE_REFUSALS)
async def test_a_recorded_create_refusal_is_an_answer_raised_at_once(name: str) -> None:
    """The backend refuses a create with 400, 401 and, for some refusals, 500 ("Provider
    'nope' not found", "JSON Parse error": the same request gets the same 500). None of
    them is a flake: retrying would only spend the phase's time and then call it a timeout."""
    record = _record(name)
    body = record["requestBody"] if isinstance(record["requestBody"], dict) else FLOW_BODY
    replay, result = await _replay(name, lambda api: api.create_deployment(body))
    assert len(replay.requests) == 1, f"{name}: retried a refusal {len(replay.requests)} times"
    assert isinstance(result, HTTPStatusError) and result.status == record["status"]
    assert result.message == record["responseBody"]["error"]["message"]


async def test_a_500_that_is_not_a_known_refusal_is_still_retried() -> None:
    """The first create after an install may meet a 5xx while KAITO's webhook warms up."""
    record = {
        "status": 500,
        "responseContentType": "application/json",
        "responseBody": {
            "error": {
                "message": "Failed to create deployment: Internal error occurred: failed "
                'calling webhook "validation.workspace.kaito.sh": connection refused',
                "statusCode": 500,
            }
        },
    }
    replay = Replay(record)
    api = KubeFoundryClient(
        "http://backend.test", transport=httpx.MockTransport(replay), retry=RETRYING
    )
    async with api:
        with pytest.raises(ServerError):
            await api.create_deployment(FLOW_BODY)
    assert len(replay.requests) == RETRYING.attempts


@pytest.mark.parametrize("name", sorted(ANSWER_ONLY))
async def test_a_refused_scheme_reads_as_unauthorized(name: str) -> None:
    replay, result = await _replay(name, ANSWER_ONLY[name], token="not-checked")
    assert len(replay.requests) == 1
    assert isinstance(result, Unauthorized) and result.message == "Authentication required"
    assert replay.requests[0].headers["Authorization"] == "Bearer not-checked"
