"""A confirming read after a watch event: the API server's answer, at least as new as the event."""

from __future__ import annotations

from pathlib import Path

import pytest
from _testcluster import fresh_cluster

from orchestrator.clients import NAMESPACES, PODS, KubeClient

pytestmark = [pytest.mark.anyio, pytest.mark.cluster]


async def test_a_read_not_older_than_a_version_sees_that_version_or_newer(tmp_path: Path) -> None:
    with fresh_cluster() as cluster:
        kube = await KubeClient.from_kubeconfig(str(cluster.kubeconfig))
        try:
            await kube.create(NAMESPACES, {"metadata": {"name": "reads"}})
            pod = {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i"}]}}
            await kube.create(PODS, pod, "reads")
            for i in range(5):
                body = {"metadata": {"annotations": {"step": str(i)}}}
                written = await kube.patch(PODS, "p", body, "reads")
                version = written["metadata"]["resourceVersion"]
                read = await kube.get(PODS, "p", "reads", not_older_than=version)
                assert read["metadata"]["annotations"]["step"] == str(i)
                assert int(read["metadata"]["resourceVersion"]) >= int(version)
        finally:
            await kube.aclose()


async def test_a_list_not_older_than_a_version_sees_that_version_or_newer(tmp_path: Path) -> None:
    with fresh_cluster() as cluster:
        kube = await KubeClient.from_kubeconfig(str(cluster.kubeconfig))
        try:
            await kube.create(NAMESPACES, {"metadata": {"name": "lists"}})
            pod = {
                "metadata": {"name": "p", "labels": {"app": "a"}},
                "spec": {"containers": [{"name": "c", "image": "i"}]},
            }
            await kube.create(PODS, pod, "lists")
            for i in range(5):
                body = {"metadata": {"annotations": {"step": str(i)}}}
                written = await kube.patch(PODS, "p", body, "lists")
                version = written["metadata"]["resourceVersion"]
                listed = await kube.list(
                    PODS, "lists", label_selector="app=a", not_older_than=version
                )
                (read,) = listed["items"]
                assert read["metadata"]["annotations"]["step"] == str(i)
                assert int(listed["metadata"]["resourceVersion"]) >= int(version)
        finally:
            await kube.aclose()
