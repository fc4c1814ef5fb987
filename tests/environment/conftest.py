"""Fixtures for the environment tests: stand-in executables and a Kubernetes API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from environment_fakes import Standins, install_standins

from orchestrator.sandbox.kubeapi import KubeAPIServer


@pytest.fixture
def standins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Standins:
    return install_standins(tmp_path, monkeypatch)


@pytest.fixture
async def kubeapi(standins: Standins) -> AsyncIterator[KubeAPIServer]:
    """The cluster the stand-in ``kind`` "creates": its kubeconfig is what kind writes."""
    async with KubeAPIServer() as server:
        server.write_kubeconfig(standins.bin / "source-kubeconfig")
        yield server
