"""Discovery documents, enough for kubernetes-asyncio and `kubectl get`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ._resources import ResourceType

_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


def resource_list(group_version: str, types: Iterable[ResourceType]) -> dict[str, Any]:
    resources: list[dict[str, Any]] = []
    for rt in sorted(types, key=lambda t: t.plural):
        entry: dict[str, Any] = {
            "name": rt.plural,
            "singularName": rt.singular,
            "namespaced": rt.namespaced,
            "kind": rt.kind,
            "verbs": _VERBS,
        }
        if rt.short_names:
            entry["shortNames"] = rt.short_names
        resources.append(entry)
        for sub in rt.subresources:
            verbs = {"status": ["get", "patch", "update"], "log": ["get"]}.get(
                sub, ["create", "delete", "get", "patch", "update"]
            )
            kind = {"proxy": "ServiceProxyOptions"}.get(sub, rt.kind)
            resources.append(
                {
                    "name": f"{rt.plural}/{sub}",
                    "singularName": "",
                    "namespaced": rt.namespaced,
                    "kind": kind,
                    "verbs": verbs,
                }
            )
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }


def api_group(name: str, versions: list[str]) -> dict[str, Any]:
    gvs = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
    return {
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": name,
        "versions": gvs,
        "preferredVersion": gvs[0],
    }


def api_group_list(groups: dict[str, list[str]]) -> dict[str, Any]:
    out = []
    for name in sorted(groups):
        g = api_group(name, groups[name])
        del g["kind"], g["apiVersion"]
        out.append(g)
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": out}


def api_versions(server_address: str) -> dict[str, Any]:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}
        ],
    }


VERSION = {
    "major": "1",
    "minor": "36",
    "gitVersion": "v1.36.4-sandbox",
    "gitCommit": "",
    "gitTreeState": "",
    "buildDate": "1970-01-01T00:00:00Z",
    "goVersion": "",
    "compiler": "",
    "platform": "linux/amd64",
}
