"""Stand-ins small enough to read in one go, for the flow layer's unit tests.

``FakeCluster`` keeps objects in a dict and answers the handful of KubeClient calls the
flow makes; ``FakeBackend`` is a KubeFoundry API over it (an ``httpx.MockTransport``),
which on create makes the workload, its pod and its Service the way an operator would,
and on delete removes them. ``model_transport`` answers chat completions. No server,
no model, no sleeps: a flow runs through in milliseconds.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from orchestrator.clients import (
    NO_RETRY,
    PODS,
    SERVICES,
    InferenceClient,
    InferenceRoute,
    KubeFoundryClient,
    NotFound,
    Resource,
    compile_selector,
)

Obj = dict[str, Any]


def _field_terms(selector: str | None) -> list[tuple[str, str]]:
    """``path=value`` terms of a field selector (any dotted path, as an events list takes)."""
    terms = []
    for term in filter(None, (selector or "").split(",")):
        path, sep, value = term.partition("=")
        assert sep and not path.endswith("!"), selector
        terms.append((path.strip(), value.lstrip("=").strip()))
    return terms


def _dotted(obj: Obj, path: str) -> str:
    cur: Any = obj
    for part in path.split("."):
        cur = cur.get(part) if isinstance(cur, dict) else None
    return "" if cur is None else str(cur)


class FakeCluster:
    """The KubeClient calls a KubeFoundryFlow makes, over a dict of objects."""

    server = "https://cluster.test"

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], Obj] = {}
        self.deleted: list[tuple[str, str]] = []
        self.watches_opened = 0
        #: ``(plural, name, not_older_than)`` of every get, in order.
        self.gets: list[tuple[str, str, str | None]] = []
        #: ``(plural, namespace, field_selector, items answered)`` of every list, in order.
        self.lists: list[tuple[str, str | None, str | None, list[Obj]]] = []

    def put(self, res: Resource, obj: Obj) -> Obj:
        meta = obj.setdefault("metadata", {})
        self.objects[(res.plural, meta.get("namespace", ""), meta["name"])] = obj
        return obj

    def of(self, res: Resource) -> list[Obj]:
        return [o for (plural, _, _), o in self.objects.items() if plural == res.plural]

    async def list(
        self,
        res: Resource,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        timeout: float = 30.0,
        not_older_than: str | None = None,  # always the latest state here
    ) -> Obj:
        match = compile_selector(label_selector, None)
        assert match is not None, label_selector
        fields = _field_terms(field_selector)
        items = [
            o
            for (plural, ns, _), o in self.objects.items()
            if plural == res.plural
            and (namespace is None or ns == namespace)
            and match(o)
            and all(_dotted(o, path) == value for path, value in fields)
        ]
        self.lists.append((res.plural, namespace, field_selector, items))
        return {"items": items, "metadata": {"resourceVersion": "1"}}

    async def get(
        self,
        res: Resource,
        name: str,
        namespace: str | None = None,
        *,
        not_older_than: str | None = None,
    ) -> Obj:
        self.gets.append((res.plural, name, not_older_than))
        try:
            return self.objects[(res.plural, namespace or "", name)]
        except KeyError:
            raise NotFound(404, f"{res.plural} {name} not found", method="GET") from None

    async def create(self, res: Resource, body: Obj, namespace: str | None = None) -> Obj:
        body.setdefault("metadata", {}).setdefault("namespace", namespace)
        return self.put(res, body)

    async def delete(self, res: Resource, name: str, namespace: str | None = None, **_: Any) -> Obj:
        if self.objects.pop((res.plural, namespace or "", name), None) is None:
            raise NotFound(404, f"{res.plural} {name} not found", method="DELETE")
        self.deleted.append((res.plural, name))
        return {}

    async def pod_log(self, name: str, namespace: str, **_: Any) -> str:
        return f"log of {name}\n"


@dataclass
class Workload:
    """How the fake backend and operator shape one provider's objects."""

    resource: Resource
    kind: str
    pod_labels: Callable[[str], dict[str, str]]
    service_name: Callable[[str], str] = lambda name: name
    #: What the backend's status says about ready replicas (Dynamo's is always 0).
    reports_ready: bool = True
    #: The pod's container state: {"running": {}} or {"waiting": {"reason": ...}}.
    container_state: Obj = field(default_factory=lambda: {"running": {}})


@dataclass
class FakeBackend:
    """A KubeFoundry API whose deployments are objects in ``cluster``."""

    cluster: FakeCluster
    workload: Workload
    installed: bool = True
    catalog: dict[str, str] = field(default_factory=lambda: {"llama3.2:1b": "llama-3.2-1b"})
    requests: list[tuple[str, str]] = field(default_factory=list)
    bodies: list[Obj] = field(default_factory=list)

    def client(self) -> KubeFoundryClient:
        return KubeFoundryClient(
            "http://backend.test", transport=httpx.MockTransport(self.handle), retry=NO_RETRY
        )

    def handle(self, request: httpx.Request) -> httpx.Response:
        path, method = request.url.path, request.method
        self.requests.append((method, path))
        ns = request.url.params.get("namespace", "")
        parts = path.strip("/").split("/")
        if path == "/api/cluster/status":
            return httpx.Response(200, json={"connected": True})
        if parts[:3] == ["api", "installation", "providers"]:
            provider, action = parts[3], parts[4]
            if action == "install":
                self.installed = True
                return httpx.Response(200, json={"success": True, "message": "installing"})
            return httpx.Response(
                200,
                json={
                    "providerId": provider,
                    "installed": self.installed,
                    "crdFound": self.installed,
                    "operatorRunning": self.installed,
                },
            )
        if parts[:3] == ["api", "aikit", "models"]:
            name = self.catalog.get(parts[3])
            if name is None:
                return httpx.Response(404, json={"error": {"message": "no such model"}})
            return httpx.Response(200, json={"id": parts[3], "modelName": name})
        if path == "/api/deployments" and method == "POST":
            body = json.loads(request.content)
            self.bodies.append(body)
            self._make(body["name"], body["namespace"])
            return httpx.Response(
                201,
                json={
                    "message": "created",
                    "name": body["name"],
                    "namespace": body["namespace"],
                    "provider": body["provider"],
                },
            )
        if parts[:2] == ["api", "deployments"] and len(parts) == 3:
            name = parts[2]
            try:
                self.cluster.objects[(self.workload.resource.plural, ns, name)]
            except KeyError:
                return httpx.Response(404, json={"error": {"message": "not found"}})
            if method == "DELETE":
                self._remove(name, ns)
                return httpx.Response(200, json={"message": "deleted"})
            ready = 1 if self.workload.reports_ready else 0
            return httpx.Response(
                200,
                json={
                    "name": name,
                    "namespace": ns,
                    "phase": "Running",
                    "replicas": {"desired": 1, "ready": ready, "available": ready},
                },
            )
        return httpx.Response(404, json={"error": {"message": f"no route {method} {path}"}})

    def _make(self, name: str, ns: str) -> None:
        w, labels = self.workload, self.workload.pod_labels(name)
        meta = {"name": name, "namespace": ns, "labels": {"app.kubernetes.io/instance": name}}
        self.cluster.put(w.resource, {"kind": w.kind, "metadata": meta})
        running = "running" in w.container_state
        self.cluster.put(
            PODS,
            {
                "kind": "Pod",
                "metadata": {"name": f"{name}-0", "namespace": ns, "labels": labels, "uid": "u1"},
                "spec": {"containers": [{"name": "model", "image": "model:1"}]},
                "status": {
                    "phase": "Running" if running else "Pending",
                    "conditions": [{"type": "Ready", "status": "True" if running else "False"}],
                    "containerStatuses": [
                        {"name": "model", "ready": running, "state": w.container_state}
                    ],
                },
            },
        )
        self.cluster.put(
            SERVICES,
            {"metadata": {"name": w.service_name(name), "namespace": ns, "labels": labels}},
        )

    def _remove(self, name: str, ns: str) -> None:
        """The operator's part: the workload goes, and everything that carries its labels."""
        labels = self.workload.pod_labels(name)
        for key, obj in list(self.cluster.objects.items()):
            obj_labels = obj["metadata"].get("labels") or {}
            mine = key == (self.workload.resource.plural, ns, name) or (
                key[0] in ("pods", "services") and labels.items() <= obj_labels.items()
            )
            if mine and key[1] == ns:
                del self.cluster.objects[key]


def completion(model: str) -> Obj:
    return {
        "id": "c1",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }


@dataclass
class FakeModel:
    """Chat completions through the backend-proxy route; remembers what was asked."""

    asked: list[tuple[str, str]] = field(default_factory=list)

    def client(self) -> InferenceClient:
        return InferenceClient(
            InferenceRoute("backend-proxy"),
            backend_url="http://backend.test",
            transport=httpx.MockTransport(self.handle),
        )

    def handle(self, request: httpx.Request) -> httpx.Response:
        model = json.loads(request.content)["model"]
        self.asked.append((request.url.path, model))
        return httpx.Response(200, json=completion(model))


def kaito_like(resource: Resource, kind: str) -> Workload:
    """A workload whose pods and Service carry one label naming the deployment."""
    return Workload(resource, kind, lambda name: {"app": name})
