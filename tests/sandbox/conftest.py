"""Fixtures for the Kubernetes API conformance suite: the sandbox server and the real test cluster.

`kube` is parametrized over both backends, so every conformance test makes the
same assertions against each; the test cluster runs only when TESTCLUSTER_HOME
points at it.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from _testcluster import fresh_cluster
from kubernetes_asyncio import client, config

from orchestrator.sandbox.kubeapi import KubeAPIServer


@dataclass
class Kube:
    """A ready backend: its kubeconfig, an ApiClient, and backend-specific handles."""

    backend: str
    kubeconfig: pathlib.Path
    api: client.ApiClient
    server: KubeAPIServer | None = None  # sandbox only: faults are set through it
    env: dict[str, str] = field(default_factory=dict)  # test cluster only: RUN_DIR/env


async def _api_client(kubeconfig: pathlib.Path) -> client.ApiClient:
    cfg = client.Configuration()
    await config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
    return client.ApiClient(cfg)


def _testcluster_home() -> pathlib.Path:
    home = os.environ.get("TESTCLUSTER_HOME")
    if not home:
        pytest.skip("TESTCLUSTER_HOME is not set: the real test cluster backend is not available")
    path = pathlib.Path(home)
    if not (path / "start").is_file():
        pytest.skip(f"TESTCLUSTER_HOME={home} has no start script")
    return path


@pytest.fixture
async def sandbox_kube(anyio_backend: str, tmp_path: pathlib.Path) -> AsyncIterator[Kube]:
    async with KubeAPIServer() as server:
        kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig")
        api = await _api_client(kubeconfig)
        try:
            yield Kube("sandbox", kubeconfig, api, server=server)
        finally:
            await api.close()


@pytest.fixture
async def testcluster_kube(anyio_backend: str) -> AsyncIterator[Kube]:
    _testcluster_home()
    with fresh_cluster() as cluster:
        api = await _api_client(cluster.kubeconfig)
        try:
            yield Kube("testcluster", cluster.kubeconfig, api, env=cluster.env)
        finally:
            await api.close()


@pytest.fixture(params=["sandbox", "testcluster"])
def kube(request: pytest.FixtureRequest) -> Kube:
    """Either backend; the test cluster one skips when it is not installed."""
    if request.param == "testcluster":
        _testcluster_home()
    return request.getfixturevalue(f"{request.param}_kube")


@pytest.fixture
def sandbox(sandbox_kube: Kube) -> Kube:
    """The sandbox backend alone, for its fault injection."""
    return sandbox_kube
