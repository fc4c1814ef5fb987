"""An ephemeral kind cluster: create it, wait for its nodes, delete it.

A run that makes its own cluster proves the installation on a clean slate and
cannot be confused by what an earlier run left behind; it must then also remove
the cluster, and only that cluster: one that existed before the run is someone
else's and is never deleted.

``kind create cluster`` fails now and then for reasons that have nothing to do
with the system under test (a slow image pull, a Docker network race), so the
creation is tried twice, with the half-made cluster removed in between. Node
readiness is not left to ``kind --wait``: the nodes are watched through the
Kubernetes API, which both wakes up the moment they are Ready and says which
node was not when the deadline passes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio

from ..clients import ClientError, KubeClient, Resource, TransportError, watch
from ._errors import EnvironmentSetupError
from ._process import CommandResult, run_logged

NODES = Resource("", "v1", "nodes", namespaced=False)

#: How long ``docker info`` may take before the Docker daemon counts as not answering.
DOCKER_INFO_TIMEOUT = 30.0
#: How long the API server gets to answer GET /version once kind says the cluster exists.
REACHABLE_TIMEOUT = 15.0

KIND_INSTALL_HINT = "install it: https://kind.sigs.k8s.io/docs/user/quick-start/#installation"


class KindCluster:
    """One kind cluster, created (or reused) for one run.

    ``workdir`` receives ``kind.log`` with the output of every command, and the
    cluster's kubeconfig (``workdir/kubeconfig``, never the user's ``~/.kube/config``)
    unless ``kubeconfig_dir`` names a folder of its own for it. The kubeconfig holds
    the cluster's client key: a caller whose ``workdir`` is uploaded (CI artifacts)
    passes a private ``kubeconfig_dir`` that leaves with the run. ``log`` gets one
    line per step, for the run log.
    """

    def __init__(
        self,
        name: str = "kubefoundry-test",
        *,
        kind: str = "kind",
        kubectl: str = "kubectl",
        docker: str = "docker",
        keep: bool = False,
        reuse: bool = False,
        node_image: str | None = None,
        workdir: Path,
        kubeconfig_dir: Path | None = None,
        log: Callable[[str], None] = lambda _line: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not name or not name.strip():
            raise ValueError("a kind cluster needs a name")
        self.name = name
        self.kind = kind
        self.kubectl = kubectl
        self.docker = docker
        self.keep = keep
        self.reuse = reuse
        self.node_image = node_image
        self.workdir = Path(workdir)
        self.kubeconfig = Path(kubeconfig_dir or self.workdir) / "kubeconfig"
        self.log_path = self.workdir / "kind.log"
        self._log = log
        self.clock = clock
        #: True once this run started creating the cluster: even a creation that was
        #: cancelled halfway leaves containers that delete() must remove.
        self.created = False
        self.deleted = False

    # -- create ----------------------------------------------------------------------

    async def create(self) -> None:
        """Make the cluster (or adopt an existing one when ``reuse``) and write its kubeconfig."""
        kind = self._require(
            self.kind, f"kind not found on PATH ({self.kind!r}); {KIND_INSTALL_HINT}"
        )
        await self._check_docker()
        existing = await self.existing_clusters()
        if self.name in existing:
            if not self.reuse:
                raise EnvironmentSetupError(
                    f"a kind cluster named {self.name!r} already exists and reuse was not asked for; "
                    f"reuse it, pick another name, or delete it: kind delete cluster --name {self.name}"
                )
            self._log(f"reusing the existing kind cluster {self.name!r}")
            await self._export_kubeconfig(kind)
            return

        self.workdir.mkdir(parents=True, exist_ok=True)
        self.kubeconfig.parent.mkdir(parents=True, exist_ok=True)
        self.created = True
        first = await self._create_once(kind)
        if first.ok:
            self._private_kubeconfig()
            return
        self._log(
            f"kind create cluster failed ({first.tail(2)}); deleting what it left and retrying once"
        )
        await self._run(kind, "delete", "cluster", "--name", self.name)
        second = await self._create_once(kind)
        if not second.ok:
            raise EnvironmentSetupError(
                f"kind create cluster --name {self.name} failed twice (exit {second.returncode}): "
                f"{second.tail()}; full output in {self.log_path}",
                detail=second.stderr or second.stdout,
            )
        self._private_kubeconfig()

    def _private_kubeconfig(self) -> None:
        """Readable by this user only, whoever wrote it: it holds the cluster's client key."""
        if self.kubeconfig.is_file():
            self.kubeconfig.chmod(0o600)

    async def existing_clusters(self) -> list[str]:
        """The names ``kind get clusters`` lists (kind says "No kind clusters found." on stderr)."""
        kind = self._require(
            self.kind, f"kind not found on PATH ({self.kind!r}); {KIND_INSTALL_HINT}"
        )
        result = await self._run(kind, "get", "clusters")
        if not result.ok:
            raise EnvironmentSetupError(
                f"kind get clusters failed (exit {result.returncode}): {result.tail()}"
            )
        return [line.strip() for line in result.stdout.splitlines() if line.strip()]

    async def _create_once(self, kind: str) -> CommandResult:
        argv = [
            "create",
            "cluster",
            "--name",
            self.name,
            "--kubeconfig",
            str(self.kubeconfig),
            # Readiness is watched through the API afterwards, where it can be
            # timed and explained; kind only has to bring the control plane up.
            "--wait",
            "0s",
        ]
        if self.node_image:
            argv += ["--image", self.node_image]
        self._log(f"creating kind cluster {self.name!r} (output in {self.log_path.name})")
        return await self._run(kind, *argv)

    async def _export_kubeconfig(self, kind: str) -> None:
        # Its output is the cluster's client certificate and key: never in the log.
        result = await self._run(kind, "get", "kubeconfig", "--name", self.name, log_stdout=False)
        if not result.ok or not result.stdout.strip():
            raise EnvironmentSetupError(
                f"kind get kubeconfig --name {self.name} failed "
                f"(exit {result.returncode}): {result.tail()}"
            )
        # Into the kubeconfig's own folder (``kubeconfig_dir`` may not be ``workdir``),
        # this user's only from its first byte, not after a chmod.
        self.kubeconfig.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.kubeconfig, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(fd, 0o600)  # a file that was there keeps its mode through open()
            handle.write(result.stdout)

    async def _check_docker(self) -> None:
        docker = self._require(
            self.docker,
            "Docker is not installed (docker not found on PATH); "
            "kind runs its nodes as Docker containers",
        )
        with anyio.move_on_after(DOCKER_INFO_TIMEOUT) as scope:
            result = await self._run(docker, "info")
        if scope.cancelled_caught:
            raise EnvironmentSetupError(
                f"Docker is not running: docker info did not answer in {DOCKER_INFO_TIMEOUT:g} s"
            )
        if not result.ok:
            raise EnvironmentSetupError(
                f"Docker is not running: docker info failed "
                f"(exit {result.returncode}): {result.tail(2)}"
            )

    # -- images ----------------------------------------------------------------------

    async def load_images(self, images: list[str]) -> None:
        """``kind load docker-image`` each image into every node, from the local Docker.

        A model image is gigabytes: pulled by the node it takes minutes of the Deploy
        phase on every fresh cluster. Loaded from a cache restored on the host, the
        kubelet finds it present and the pull costs nothing (CI keeps the image between
        runs). An image that is not in the local Docker is an error, not a silent pull.
        """
        kind = self._require(
            self.kind, f"kind not found on PATH ({self.kind!r}); {KIND_INSTALL_HINT}"
        )
        for image in images:
            self._log(f"loading image {image} into the nodes of {self.name!r}")
            result = await self._run(kind, "load", "docker-image", image, "--name", self.name)
            if not result.ok:
                raise EnvironmentSetupError(
                    f"kind load docker-image {image} failed (exit {result.returncode}): "
                    f"{result.tail()}; pull or load it into the local Docker first "
                    f"(docker pull {image}), or leave it to the node to pull",
                    detail=result.stderr or result.stdout,
                )

    # -- wait and check --------------------------------------------------------------

    async def wait_nodes_ready(self, deadline: float) -> list[str]:
        """Return the node names once every node has condition Ready=True.

        ``deadline`` is absolute on this cluster's clock (``time.monotonic`` unless
        given). Wakes on watch events; never polls.
        """
        nodes: dict[str, tuple[bool, str]] = {}

        def note(name: str, seen: tuple[bool, str]) -> None:
            if nodes.get(name) != seen:
                # One line per change, so the run log tells how long each node
                # took without a line per heartbeat.
                self._log(f"node {name}: {seen[1]}")
            nodes[name] = seen

        def all_ready() -> bool:
            return bool(nodes) and all(ready for ready, _ in nodes.values())

        async with await self._client() as client:
            with anyio.move_on_after(max(0.0, deadline - self.clock())) as scope:
                # The watch replays its listing one object at a time, which alone would
                # make "every node seen so far is Ready" true after the first node. A
                # listing of our own first gives the whole set to judge against.
                listing = await self._list_nodes(client)
                for node in listing:
                    note(str(node.get("metadata", {}).get("name", "")), _readiness(node))
                if not all_ready():
                    try:
                        async with contextlib.aclosing(
                            watch(client, NODES, on_note=self._log)
                        ) as events:
                            async for event in events:
                                if event.type == "DELETED":
                                    nodes.pop(event.name, None)
                                else:
                                    note(event.name, _readiness(event.object))
                                if all_ready():
                                    break
                    except ClientError as exc:  # an answer such as 403: waiting will not help
                        raise EnvironmentSetupError(
                            f"kind cluster {self.name!r}: cannot watch nodes: {exc}"
                        ) from None
        if scope.cancelled_caught:
            if not nodes:
                state = "no node has registered yet"
            else:
                state = ", ".join(
                    f"{name} {why}" for name, (ready, why) in sorted(nodes.items()) if not ready
                )
            raise EnvironmentSetupError(
                f"kind cluster {self.name!r}: nodes not Ready before the deadline: {state}"
            )
        names = sorted(nodes)
        self._log(f"nodes Ready: {', '.join(names)}")
        await self._snapshot_nodes()
        return names

    async def _list_nodes(self, client: KubeClient) -> list[dict[str, Any]]:
        """The nodes now; an API server still starting up is waited out like the watch does."""
        delay = 0.1
        while True:
            try:
                listing = await client.list(NODES)
                return list(listing.get("items") or [])
            except TransportError as exc:
                self._log(f"listing nodes: {exc}; retrying in {delay:.1f} s")
            except ClientError as exc:
                raise EnvironmentSetupError(
                    f"kind cluster {self.name!r}: cannot list nodes: {exc}"
                ) from None
            await anyio.sleep(delay)
            delay = min(2.0, delay * 2)

    async def check_reachable(self, timeout: float = REACHABLE_TIMEOUT) -> str:
        """GET /version through the kubeconfig; return the server's gitVersion."""
        try:
            async with await self._client() as client:
                with anyio.fail_after(timeout):
                    body = await client.request("GET", "/version", timeout=timeout)
        except TimeoutError:
            raise EnvironmentSetupError(
                f"kind cluster {self.name!r}: the API server did not answer "
                f"GET /version in {timeout:g} s"
            ) from None
        except ClientError as exc:
            raise EnvironmentSetupError(
                f"kind cluster {self.name!r}: the API server is not reachable: {exc}"
            ) from None
        version = str(body.get("gitVersion", "?")) if isinstance(body, dict) else "?"
        self._log(f"API server reachable (Kubernetes {version})")
        return version

    async def _client(self) -> KubeClient:
        if not self.kubeconfig.is_file():
            raise EnvironmentSetupError(
                f"kind cluster {self.name!r}: no kubeconfig at "
                f"{self.kubeconfig}; was the cluster created?"
            )
        try:
            return await KubeClient.from_kubeconfig(str(self.kubeconfig))
        except Exception as exc:  # the loader raises many kinds; all mean "unusable kubeconfig"
            raise EnvironmentSetupError(
                f"kind cluster {self.name!r}: cannot load "
                f"{self.kubeconfig}: {type(exc).__name__}: {exc}"
            ) from None

    async def _snapshot_nodes(self) -> None:
        """Put ``kubectl get nodes -o wide`` in the log, for a person reading it later.

        Best effort: kubectl is a convenience here, not a requirement of the run.
        """
        kubectl = shutil.which(self.kubectl)
        if kubectl is None:
            return
        with contextlib.suppress(OSError), anyio.move_on_after(REACHABLE_TIMEOUT):
            await self._run(
                kubectl, "--kubeconfig", str(self.kubeconfig), "get", "nodes", "-o", "wide"
            )

    # -- delete ----------------------------------------------------------------------

    async def delete(self) -> bool:
        """Delete the cluster if this run created it and it is not to be kept.

        Returns whether it was deleted. Shielded from cancellation: an interrupted
        run must still remove the containers it started.
        """
        if not self.created or self.deleted:
            return False
        if self.keep:
            self._log(
                f"keeping kind cluster {self.name!r}; its kubeconfig: "
                f"kind get kubeconfig --name {self.name}; delete it with: {self.delete_command()}"
            )
            return False
        kind = self._require(self.kind, f"kind not found on PATH ({self.kind!r})")
        with anyio.CancelScope(shield=True):
            result = await self._run(
                kind, "delete", "cluster", "--name", self.name, "--kubeconfig", str(self.kubeconfig)
            )
        if not result.ok:
            raise EnvironmentSetupError(
                f"kind delete cluster --name {self.name} failed (exit {result.returncode}): "
                f"{result.tail()}; delete it by hand: {self.delete_command()}"
            )
        self.deleted = True
        self._log(f"deleted kind cluster {self.name!r}")
        return True

    def delete_command(self) -> str:
        return f"kind delete cluster --name {self.name}"

    # -- plumbing --------------------------------------------------------------------

    async def _run(self, executable: str, *args: str, log_stdout: bool = True) -> CommandResult:
        env = dict(os.environ)
        # kind would otherwise write the new context into the user's own kubeconfig.
        env["KUBECONFIG"] = str(self.kubeconfig)
        try:
            return await run_logged(
                [executable, *args], self.log_path, env=env, log_stdout=log_stdout
            )
        except OSError as exc:
            raise EnvironmentSetupError(f"cannot run {Path(executable).name}: {exc}") from None

    @staticmethod
    def _require(executable: str, message: str) -> str:
        found = shutil.which(executable)
        if found is None:
            raise EnvironmentSetupError(message)
        return found


def _readiness(node: dict[str, Any]) -> tuple[bool, str]:
    """``(ready, why)`` from a node's Ready condition; a missing condition is not Ready."""
    for condition in node.get("status", {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            if condition.get("status") == "True":
                return True, "Ready"
            reason = condition.get("reason") or condition.get("message") or "no reason given"
            return False, f"NotReady ({reason})"
    return False, "NotReady (no Ready condition yet)"
