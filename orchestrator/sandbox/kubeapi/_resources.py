"""What a served resource is: its group/version/plural, scope, subresources and selectable fields."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ._selectors import _get


@dataclass
class ResourceType:
    group: str
    version: str
    plural: str
    singular: str
    kind: str
    namespaced: bool
    has_status: bool = False
    short_names: list[str] = field(default_factory=list)
    extra_fields: list[str] = field(default_factory=list)
    subresources: list[str] = field(default_factory=list)
    # The resourceVersion at which this type's history starts: watches from an
    # older version are answered 410, like a freshly filled watch cache.
    created_rv: int = 0
    # Loop time before which list/watch answer 429 (see KubeFaults).
    busy_until: float = 0.0

    @property
    def key(self) -> str:
        """Identifies the stored objects across versions of the same group/plural."""
        return f"{self.group}/{self.plural}"

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    def selectable_fields(self) -> set[str]:
        names = {"metadata.name", *self.extra_fields}
        if self.namespaced:
            names.add("metadata.namespace")
        return names

    def fields_of(self, obj: dict[str, Any]) -> dict[str, str]:
        meta = obj.get("metadata") or {}
        out = {"metadata.name": meta.get("name", "")}
        if self.namespaced:
            out["metadata.namespace"] = meta.get("namespace", "")
        for path in self.extra_fields:
            out[path] = _get(obj, path)
        return out


_EVENT_FIELDS = [
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "type",
]
_POD_FIELDS = [
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.schedulerName",
    "status.phase",
    "status.podIP",
]


def builtin_types() -> list[ResourceType]:
    """The core/v1 kinds the test cluster serves, and the CRD kind itself."""
    return [
        ResourceType(
            "", "v1", "pods", "pod", "Pod", True, True, ["po"], _POD_FIELDS, ["status", "log"]
        ),
        ResourceType("", "v1", "nodes", "node", "Node", False, True, ["no"], [], ["status"]),
        ResourceType(
            "",
            "v1",
            "namespaces",
            "namespace",
            "Namespace",
            False,
            True,
            ["ns"],
            ["status.phase"],
            ["status"],
        ),
        ResourceType("", "v1", "events", "event", "Event", True, False, ["ev"], _EVENT_FIELDS),
        ResourceType("", "v1", "configmaps", "configmap", "ConfigMap", True, False, ["cm"]),
        ResourceType("", "v1", "secrets", "secret", "Secret", True, False, [], ["type"]),
        ResourceType(
            "", "v1", "services", "service", "Service", True, True, ["svc"], [], ["status", "proxy"]
        ),
        ResourceType(
            "", "v1", "serviceaccounts", "serviceaccount", "ServiceAccount", True, False, ["sa"]
        ),
        ResourceType(
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            "customresourcedefinition",
            "CustomResourceDefinition",
            False,
            True,
            ["crd", "crds"],
            [],
            ["status"],
        ),
    ]


def types_from_crd(crd: dict[str, Any]) -> list[ResourceType]:
    """One ResourceType per served version of a CRD (its schema is deliberately not enforced)."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    out = []
    for v in spec.get("versions") or []:
        if not v.get("served", True):
            continue
        subs = v.get("subresources") or {}
        out.append(
            ResourceType(
                group=spec.get("group", ""),
                version=v.get("name", ""),
                plural=names.get("plural", ""),
                singular=names.get("singular") or names.get("kind", "").lower(),
                kind=names.get("kind", ""),
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                has_status="status" in subs,
                short_names=list(names.get("shortNames") or []),
                subresources=["status"] if "status" in subs else [],
            )
        )
    return out
