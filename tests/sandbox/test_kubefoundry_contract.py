"""Replay the exchanges recorded from the real KubeFoundry backend against the stand-in.

The recordings (``$KUBEFOUNDRY_CONTRACT_DIR``) are replayed in their order; between
them the test moves the sandbox to the state the recording was made in (KAITO
installed, pod Running, conditions set, Workspace gone) by holding and releasing the
controller's delays and waiting on watches. Status codes, keys, value types and every
value that does not depend on the recording rig must match.
"""

from __future__ import annotations

import fnmatch
import json
import os
from pathlib import Path
from typing import Any

import pytest
from _fixtures import (  # noqa: F401 - fixtures are used by name
    CREATE_BODY,
    NAME,
    NS,
    WS_COLLECTION,
    call,
    condition,
    gone,
    install_kaito,
    kube_backend,
    make_sandbox,
    pod_phase,
    running_workspace,
    wait_for,
    waiting_reason,
)

from orchestrator.sandbox import Delays, Faults

pytestmark = pytest.mark.anyio

STATUS_FLAGS = ("installed", "crdFound", "operatorRunning")
# Values that depend on the rig (time, cluster, helm stand-in, generated names): type only.
RIG_VALUES = [
    "timestamp",
    "createdAt",
    "*.createdAt",
    "*.lastTransitionTime",
    "clusterName",
    "version",
    "*.metadata.creationTimestamp",
    "*.metadata.uid",
    "*.metadata.resourceVersion",
    "*.metadata.generation",
    "*.metadata.managedFields",
    "installationStatus.*",
    "results.*.output",
    "logs",
    "*.node",
    "results.*.step",  # one apply step per CRD file given to the sandbox
]
# Lists whose length depends on the rig: the CRD files applied, the conditions already set.
RIG_LENGTHS = ["results", "conditions", "*.managedFields"]
# Objects that may carry more than the recording: KAITO's finalizer on the stored Workspace.
EXTRA_KEYS_OK = ["resources.*.manifest.metadata", "*.managedFields.*"]
# Server-maintained fields that a smaller API server may not keep.
OPTIONAL_KEYS = {"managedFields"}
# Where the recording's rig had no KAITO controller, so its state differs from a real one.
PER_FILE_RIG = {
    "31-deployment-get-pod-running-no-status.json": ["conditions.*"],
}


def _contract_dir() -> Path:
    value = os.environ.get("KUBEFOUNDRY_CONTRACT_DIR")
    if not value:
        pytest.skip(
            "KUBEFOUNDRY_CONTRACT_DIR is not set: no recorded KubeFoundry exchanges to replay"
        )
    return Path(value)


def _matches(path: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(path, p) for p in patterns)


def _kind(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return type(value).__name__
    if isinstance(value, (int, float)):
        return "number"
    return type(value).__name__


def compare(expected: Any, actual: Any, rig: list[str], path: str = "") -> list[str]:
    """Differences between a recorded body and ours, as ``path: what`` lines."""
    where = path or "<body>"
    if _kind(expected) != _kind(actual):
        return [
            f"{where}: expected {_kind(expected)} {expected!r:.80}, got {_kind(actual)} {actual!r:.80}"
        ]
    if path and _matches(path, rig):
        return []
    if isinstance(expected, dict):
        problems = []
        missing = expected.keys() - actual.keys() - OPTIONAL_KEYS
        extra = actual.keys() - expected.keys()
        if missing:
            problems.append(f"{where}: missing keys {sorted(missing)}")
        if extra and not _matches(path, EXTRA_KEYS_OK):
            problems.append(f"{where}: unexpected keys {sorted(extra)}")
        for key in expected.keys() & actual.keys():
            problems += compare(expected[key], actual[key], rig, f"{path}.{key}" if path else key)
        return problems
    if isinstance(expected, list):
        problems = []
        if len(expected) != len(actual) and not _matches(path, RIG_LENGTHS):
            problems.append(f"{where}: expected {len(expected)} items, got {len(actual)}")
        for i, (e, a) in enumerate(zip(expected, actual, strict=False)):
            problems += compare(e, a, rig, f"{path}.{i}")
        return problems
    return [] if expected == actual else [f"{where}: expected {expected!r}, got {actual!r}"]


class Replayer:
    def __init__(self, directory: Path, api: Any) -> None:
        self.directory = directory
        self.api = api
        self.substitutions: dict[str, str] = {}

    def _sub(self, text: str) -> str:
        for old, new in self.substitutions.items():
            text = text.replace(old, new)
        return text

    async def replay(self, filename: str) -> Any:
        record = json.loads((self.directory / filename).read_text())
        headers = {k: v for k, v in record["requestHeaders"].items()}
        kwargs: dict[str, Any] = {"headers": headers}
        body = record["requestBody"]
        if isinstance(body, str):
            kwargs["data"] = body.encode()
        elif body is not None:
            kwargs["data"] = json.dumps(body).encode()
        path = self._sub(record["path"])
        async with self.api.request(record["method"], path, **kwargs) as resp:
            status, media, text = resp.status, resp.content_type, await resp.text()
        try:
            answer = json.loads(text)
        except ValueError:
            answer = text
        expected = json.loads(self._sub(json.dumps(record["responseBody"])))
        rig = RIG_VALUES + PER_FILE_RIG.get(filename, [])
        problems = (
            []
            if status == record["status"]
            else [f"status: expected {record['status']}, got {status}"]
        )
        # The media type, not its parameters (a charset the client does not read).
        recorded_media = record["responseContentType"].split(";")[0].strip().lower()
        if media.lower() != recorded_media:
            problems.append(f"content type: expected {recorded_media}, got {media}")
        problems += compare(expected, answer, rig)
        assert not problems, (
            f"{filename}:\n  " + "\n  ".join(problems) + f"\n  body: {json.dumps(answer)[:800]}"
        )
        return answer


async def _operator_pod(kube: Any) -> str:
    pods = await kube.get(
        f"/api/v1/namespaces/{NS}/pods", {"labelSelector": "app.kubernetes.io/name=kaito-workspace"}
    )
    return pods["items"][0]["metadata"]["name"]


async def test_replay_the_recorded_kaito_flow(make_sandbox) -> None:
    directory = _contract_dir()
    hold = Faults(
        delays=Delays(
            operator_start=3600, resource=3600, pod_start=0.1, inference_ready=3600, finalize=3600
        )
    )
    async with make_sandbox(faults=hold) as (sandbox, api, kube):
        replayer = Replayer(directory, api)
        for name in [
            "01-health.json",
            "02-cluster-status.json",
            "03-helm-status.json",
            "04-kaito-status-before.json",
        ]:
            await replayer.replay(name)
        installed = await replayer.replay("05-kaito-install.json")
        # As the real backend answers on a cluster (helm runs without --wait): the CRDs
        # are there, the operator is not Running yet, and so not installed.
        assert installed["installing"] is True
        assert {k: installed["installationStatus"][k] for k in STATUS_FLAGS} == {
            "installed": False,
            "crdFound": True,
            "operatorRunning": False,
        }
        assert "installation started" in installed["message"]
        status, body = await call(api, "GET", "/api/installation/providers/kaito/status")
        assert (status, body["installed"], body["operatorRunning"]) == (200, False, False)
        steps = [r["step"] for r in installed["results"]]
        recorded = json.loads((directory / "05-kaito-install.json").read_text())["responseBody"][
            "results"
        ]
        assert set(steps) <= {r["step"] for r in recorded}
        assert (
            steps[:2] == ["repo-add-kaito", "repo-update"]
            and steps[-1] == "install-kaito-workspace"
        )

        operator = await _operator_pod(kube)
        sandbox.update_faults({"delays": {"operator_start": 0}})
        await wait_for(kube, f"/api/v1/namespaces/{NS}/pods", operator, pod_phase("Running"))
        await wait_for(kube, WS_COLLECTION, "no-such-workspace", lambda _: True)
        for name in sorted(os.listdir(directory)):
            if "06" <= name[:2] <= "29":
                await replayer.replay(name)

        # Right after create the pod exists but its container is being created: the real
        # backend answers the logs route 500 (the API server refuses a waiting container).
        sandbox.update_faults({"delays": {"resource": 0, "pod_start": 3600}})
        await wait_for(
            kube, f"/api/v1/namespaces/{NS}/pods", f"{NAME}-0", waiting_reason("ContainerCreating")
        )
        status, body = await call(api, "GET", f"/api/deployments/{NAME}/logs?namespace={NS}")
        assert status == 500, body
        assert body["error"]["message"].startswith(f"Failed to get logs for pod {NAME}-0"), body
        assert "ContainerCreating" in body["error"]["message"]
        sandbox.update_faults({"delays": {"pod_start": 0}})
        await wait_for(kube, f"/api/v1/namespaces/{NS}/pods", f"{NAME}-0", pod_phase("Running"))
        await wait_for(
            kube,
            WS_COLLECTION,
            NAME,
            lambda ws: bool((ws or {}).get("status", {}).get("conditions")),
        )
        for name in [
            "30-deployment-pods-running.json",
            "31-deployment-get-pod-running-no-status.json",
            "32-deployment-get-resource-ready-only.json",
        ]:
            await replayer.replay(name)

        sandbox.update_faults({"delays": {"inference_ready": 0}})
        await wait_for(kube, WS_COLLECTION, NAME, running_workspace)
        recorded_operator = "kaito-workspace-6b0f3dbac4-2z0z0"
        replayer.substitutions[recorded_operator] = operator
        for name in sorted(os.listdir(directory)):
            if "33" <= name[:2] <= "41":
                await replayer.replay(name)

        # While KAITO tears it down, the Workspace keeps its conditions: the backend still
        # says Running, with WorkspaceDeleting=True beside them, until it is gone.
        await wait_for(
            kube, WS_COLLECTION, NAME, lambda ws: condition(ws, "WorkspaceDeleting") == "True"
        )
        status, body = await call(api, "GET", f"/api/deployments/{NAME}?namespace={NS}")
        assert (status, body["phase"]) == (200, "Running"), body
        assert {"type": "WorkspaceDeleting", "status": "True"}.items() <= next(
            c for c in body["conditions"] if c["type"] == "WorkspaceDeleting"
        ).items()
        sandbox.update_faults({"delays": {"finalize": 0}})
        await wait_for(kube, WS_COLLECTION, NAME, gone)
        for name in sorted(os.listdir(directory)):
            if "42" <= name[:2] <= "47":
                await replayer.replay(name)


async def test_replay_the_recorded_auth_exchanges(make_sandbox) -> None:
    directory = _contract_dir()
    async with make_sandbox(auth_token="s3cret") as (sandbox, api, kube):
        replayer = Replayer(directory, api)
        for name in sorted(os.listdir(directory)):
            if "48" <= name[:2] <= "54":
                await replayer.replay(name)
        status, body = await call(
            api,
            "GET",
            f"/api/deployments?namespace={NS}",
            headers={"Authorization": "Bearer s3cret"},
        )
        assert status == 200 and body["deployments"] == []
        status, body = await call(
            api,
            "GET",
            f"/api/deployments?namespace={NS}",
            headers={"Authorization": "Bearer wrong"},
        )
        assert (status, body["error"]["message"]) == (401, "Authentication required")


@pytest.mark.parametrize("kube_backend", ["kubeapi"], indirect=True)
async def test_an_install_that_finds_the_operator_running_says_installed_successfully(
    make_sandbox,
) -> None:
    """``installing`` is ``!installed`` and the message follows it, as the real backend's.

    The usual answer (operator not Running yet) is replayed above; here the operator is
    already Running when the install applies the missing CRDs, so the answer is installed.
    The scenario needs a CRD deleted and gone, which the test cluster does not finish
    within the deadline (its CRD cleanup finalizer), so it runs on the sandbox's API.
    """
    async with make_sandbox(faults=Faults(delays=Delays(operator_start=0))) as (sb, api, kube):
        await install_kaito(api, kube)
        crd = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/workspaces.kaito.sh"
        await kube.delete(crd)
        await wait_for(
            kube,
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            "workspaces.kaito.sh",
            gone,
        )
        status, body = await call(api, "GET", "/api/installation/providers/kaito/status")
        assert (body["installed"], body["crdFound"], body["operatorRunning"]) == (
            False,
            False,
            True,
        )
        status, answer = await call(api, "POST", "/api/installation/providers/kaito/install")
        assert status == 200, answer
        assert answer["installationStatus"]["installed"] is True
        assert answer["installing"] is False
        assert answer["message"] == "KAITO installed successfully"


@pytest.mark.parametrize("kube_backend", ["kubeapi"], indirect=True)
async def test_a_deployment_addressed_without_its_namespace_is_not_found(make_sandbox) -> None:
    """KUBEFOUNDRY.md: always pass ``namespace``. Without it the real backend looks in its
    own default namespace (recording 02 reports ``kubefoundry-system``), not KAITO's, so a
    client that forgot it would find nothing there: the stand-in must not find it either."""
    async with make_sandbox() as (sb, api, kube):
        await install_kaito(api, kube)
        status, answer = await call(api, "POST", "/api/deployments", json=CREATE_BODY)
        assert status == 201, answer
        status, body = await call(api, "GET", f"/api/deployments/{NAME}")
        assert (status, body["error"]["message"]) == (404, "Deployment not found")
        status, body = await call(api, "DELETE", f"/api/deployments/{NAME}")
        assert status == 404, body
        status, body = await call(api, "GET", f"/api/deployments/{NAME}?namespace={NS}")
        assert status == 200, body
