"""Fixtures for the Kubernetes API conformance suite: the sandbox server and the real test cluster.

`kube` is parametrized over both backends, so every conformance test makes the
same assertions against each; the test cluster runs only when TESTCLUSTER_HOME
points at it.
"""

from __future__ import annotations

import os
import pathlib
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import anyio
import pytest
from _testcluster import stop_later
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


def _run_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    """RUN_DIR may not contain whitespace; fall back to a fresh temp dir if pytest's has some."""
    run_dir = tmp_path / "testcluster"
    if any(ch.isspace() for ch in str(run_dir)):
        run_dir = pathlib.Path(tempfile.mkdtemp(prefix="testcluster-"))
    return run_dir


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
async def testcluster_kube(anyio_backend: str, tmp_path: pathlib.Path) -> AsyncIterator[Kube]:
    home = _testcluster_home()
    run_dir = _run_dir(tmp_path)
    started = await anyio.run_process([str(home / "start"), str(run_dir)], check=False)
    if started.returncode != 0:
        pytest.fail(
            f"test cluster did not start: {started.stderr.decode(errors='replace')[-2000:]}"
        )
    try:
        kubeconfig = pathlib.Path(started.stdout.decode().strip().splitlines()[-1])
        env = dict(
            line.split("=", 1) for line in (run_dir / "env").read_text().splitlines() if "=" in line
        )
        api = await _api_client(kubeconfig)
        try:
            yield Kube("testcluster", kubeconfig, api, env=env)
        finally:
            await api.close()
    finally:
        stop_later(home, run_dir)


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
