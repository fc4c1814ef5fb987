"""Per-kind create/update rules: the v1 defaults clients read, status and generation handling."""

from __future__ import annotations

import zlib
from typing import Any

from ._clone import clone
from ._resources import ResourceType


def _default_pod(pod: dict[str, Any]) -> None:
    spec = pod.setdefault("spec", {})
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    for key in ("initContainers", "containers"):
        for c in spec.get(key) or []:
            c.setdefault("resources", {})
            c.setdefault("terminationMessagePath", "/dev/termination-log")
            c.setdefault("terminationMessagePolicy", "File")
            if "imagePullPolicy" not in c:
                image = str(c.get("image", "")).rsplit("/", 1)[-1]
                latest = "@" not in image and (":" not in image or image.endswith(":latest"))
                c["imagePullPolicy"] = "Always" if latest else "IfNotPresent"
    pod["status"] = {"phase": "Pending"}


def _default_service(svc: dict[str, Any]) -> None:
    meta, spec = svc.get("metadata") or {}, svc.setdefault("spec", {})
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    for p in spec.get("ports") or []:
        p.setdefault("protocol", "TCP")
        p.setdefault("targetPort", p.get("port"))
    if spec["type"] != "ExternalName":
        if not spec.get("clusterIP"):
            h = zlib.crc32(f"{meta.get('namespace', '')}/{meta.get('name', '')}".encode())
            spec["clusterIP"] = f"10.96.{(h >> 8) % 256}.{h % 254 + 1}"
        spec.setdefault("clusterIPs", [spec["clusterIP"]])
        spec.setdefault("internalTrafficPolicy", "Cluster")
    svc["status"] = {"loadBalancer": {}}


def prepare_create(rt: ResourceType, obj: dict[str, Any]) -> None:
    """Apply what kube-apiserver's create strategies do before storing."""
    if rt.key == "/pods":
        _default_pod(obj)
    elif rt.key == "/services":
        _default_service(obj)
    elif rt.key == "/namespaces":
        obj.setdefault("spec", {})
        obj["status"] = {"phase": "Active"}
    elif rt.has_status:
        obj.pop("status", None)
    obj["metadata"]["generation"] = 1


def _spec_part(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "kind", "apiVersion")}


def prepare_update(
    rt: ResourceType, new: dict[str, Any], old: dict[str, Any], status_only: bool
) -> dict[str, Any]:
    """Return the object to store: the main resource cannot change status; /status cannot
    change the spec, and of a custom resource it changes only the status.

    A core object's /status keeps the new labels and annotations, as kube-apiserver's
    status strategies do (they keep only the old spec, and the pod's owner references):
    a kubelet may write a pod's status and its annotations in one update.
    """
    if status_only:
        out = clone(old)
        if "status" in new:
            out["status"] = new["status"]
        else:
            out.pop("status", None)
        if rt.group == "":
            for key in ("labels", "annotations"):
                value = (new.get("metadata") or {}).get(key)
                if value:
                    out["metadata"][key] = clone(value)
                else:
                    out["metadata"].pop(key, None)
        return out
    if rt.has_status:
        if "status" in old:
            new["status"] = clone(old["status"])
        else:
            new.pop("status", None)
    generation = old["metadata"].get("generation", 1)
    if _spec_part(new) != _spec_part(old):
        generation += 1
    new["metadata"]["generation"] = generation
    return new
