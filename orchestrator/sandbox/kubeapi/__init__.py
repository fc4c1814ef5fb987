"""A small Kubernetes API server over real HTTP on loopback, for machines without a cluster.

It behaves like the project's test cluster (upstream apiserver + etcd + a fake
kubelet) closely enough that kubernetes-asyncio clients and watches work
against it unchanged. See README.md next to this file for what is served and
what is deliberately left out (CRD schema validation, for one).
"""

from __future__ import annotations

import pathlib
import secrets
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import Any

import yaml
from aiohttp import web

from ._faults import KubeFaults
from ._kubelet import FakeKubelet
from ._logs import PodLogs
from ._server import ApiServer, Registry
from ._store import Store

__all__ = ["KubeAPIServer", "KubeFaults"]

_DEFAULT_NAMESPACES = ("default", "kube-node-lease", "kube-public", "kube-system")


class KubeAPIServer:
    """Serves core/v1, CRDs and custom resources from memory, with a fake kubelet driving pods."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        history: int = 1000,
        faults: KubeFaults | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.url = ""
        self.faults = faults if faults is not None else KubeFaults()
        self.token = secrets.token_hex(16)
        self._store = Store(history=history)
        self._registry = Registry()
        self._logs = PodLogs()
        self._api = ApiServer(self._store, self._registry, self._logs, self.faults)
        self._kubelet: FakeKubelet | None = None
        self._runner: web.AppRunner | None = None

    @property
    def faults(self) -> KubeFaults:
        return self._faults

    @faults.setter
    def faults(self, value: KubeFaults) -> None:
        self._faults = value
        if hasattr(self, "_api"):
            self._api.faults = value

    async def call(
        self,
        method: str,
        path: str,
        query: Mapping[str, str] | None = None,
        body: bytes = b"",
        content_type: str = "application/json",
    ) -> tuple[int, bytes]:
        """Serve one non-streaming request in-process (see ``ApiServer.call``)."""
        return await self._api.call(method, path, query, body, content_type)

    def watch(
        self, path: str, query: Mapping[str, str]
    ) -> AsyncIterator[list[tuple[str, dict[str, Any]]]]:
        """A watch served in-process (see ``ApiServer.watch``)."""
        return self._api.watch(path, query)

    async def start(self) -> None:
        """Bind the port, create the default namespaces and the fake nodes."""
        if self._runner is not None:
            return
        namespaces = self._registry.core("namespaces")
        for name in _DEFAULT_NAMESPACES:
            self._store.create(namespaces, "", {"metadata": {"name": name}})
        kinds = {p: self._registry.core(p) for p in ("pods", "events", "nodes")}
        self._kubelet = FakeKubelet(self._store, kinds, self._logs)
        self._kubelet.start()
        self._runner = web.AppRunner(self._api.app(), shutdown_timeout=1.0, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]  # the bound port when port=0
        self.url = f"http://{self.host}:{self.port}"
        self._api.server_address = f"{self.host}:{self.port}"

    async def stop(self) -> None:
        """Close watch streams first, so clients see their streams end instead of hanging."""
        if self._runner is None:
            return
        self._store.close_watchers()
        if self._kubelet is not None:
            self._kubelet.stop()
        await self._runner.cleanup()
        self._runner = None

    def write_kubeconfig(self, path: str | pathlib.Path) -> pathlib.Path:
        """A kubeconfig for kubernetes_asyncio.config.load_kube_config and kubectl."""
        if not self.url:
            raise RuntimeError("start() the server before writing its kubeconfig")
        out = pathlib.Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "sandbox", "cluster": {"server": self.url}}],
            "users": [{"name": "admin", "user": {"token": self.token}}],
            "contexts": [
                {
                    "name": "sandbox",
                    "context": {"cluster": "sandbox", "user": "admin", "namespace": "default"},
                }
            ],
            "current-context": "sandbox",
        }
        out.write_text(yaml.safe_dump(config, sort_keys=False))
        return out

    async def __aenter__(self) -> KubeAPIServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
