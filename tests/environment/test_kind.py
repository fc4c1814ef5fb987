"""KindCluster against stand-in kind/docker/kubectl and the sandbox's Kubernetes API."""

from __future__ import annotations

import os
import time
from pathlib import Path

import anyio
import pytest
from environment_fakes import Standins

from orchestrator.clients import KubeClient, Resource
from orchestrator.environment import EnvironmentSetupError, KindCluster
from orchestrator.sandbox.kubeapi import KubeAPIServer

pytestmark = pytest.mark.anyio

NODES = Resource("", "v1", "nodes", namespaced=False)
WAIT = 15.0


def make_cluster(tmp_path: Path, lines: list[str] | None = None, **options: object) -> KindCluster:
    sink = lines if lines is not None else []
    return KindCluster("kf-test", workdir=tmp_path / "artifacts", log=sink.append, **options)  # type: ignore[arg-type]


async def set_ready(server: KubeAPIServer, node: str, ready: bool) -> None:
    condition = {
        "type": "Ready",
        "status": "True" if ready else "False",
        "reason": "KubeletReady" if ready else "KubeletNotReady",
        "message": "stand-in",
    }
    async with await KubeClient.from_kubeconfig(
        str(server.write_kubeconfig(Path(os.environ["PATH"]) / "patch-kubeconfig"))
    ) as client:
        await client.patch(
            NODES, node, {"status": {"conditions": [condition]}}, subresource="status"
        )


async def wait_gone(pid: int) -> None:
    """Return once ``pid`` has ended (a pidfd turns readable then; zombies count as ended).

    A killed grandchild dies a moment after the signal, and is nobody's child to wait for.
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        with anyio.fail_after(60):  # only a hang reaches this
            await anyio.wait_readable(fd)
    finally:
        os.close(fd)


async def test_create_runs_kind_with_its_own_kubeconfig_and_deletes_what_it_made(
    tmp_path: Path, standins: Standins, kubeapi: KubeAPIServer
) -> None:
    lines: list[str] = []
    cluster = make_cluster(tmp_path, lines)
    await cluster.create()

    create = standins.calls("kind")[-1]
    assert create == [
        "kind",
        "create",
        "cluster",
        "--name",
        "kf-test",
        "--kubeconfig",
        str(tmp_path / "artifacts" / "kubeconfig"),
        "--wait",
        "0s",
    ]
    assert standins.calls("docker") == [["docker", "info"]]
    assert cluster.created and cluster.kubeconfig.is_file()
    log = (tmp_path / "artifacts" / "kind.log").read_text()
    assert "$ " in log and "Creating cluster 'kf-test'" in log and "[exit 0]" in log

    assert await cluster.check_reachable()
    with anyio.fail_after(WAIT):
        nodes = await cluster.wait_nodes_ready(time.monotonic() + WAIT)
    assert nodes == ["fake-node-0", "fake-node-1"]
    assert ["get", "nodes"] == standins.calls("kubectl")[-1][3:5]  # a snapshot for the log

    assert await cluster.delete() is True
    assert standins.commands("kind")[-1] == "delete cluster"
    assert standins.clusters() == []
    assert await cluster.delete() is False  # once is enough
    assert any("deleted kind cluster" in line for line in lines)


async def test_a_private_kubeconfig_dir_keeps_the_client_key_out_of_the_workdir(
    tmp_path: Path, standins: Standins, kubeapi: KubeAPIServer
) -> None:
    """The run passes a private folder: its artifacts (uploaded by CI) hold no kubeconfig,
    and the kind.log beside them has none of the kubeconfig's text."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    lines: list[str] = []
    cluster = make_cluster(tmp_path, lines, kubeconfig_dir=private)
    await cluster.create()

    assert cluster.kubeconfig == private / "kubeconfig" and cluster.kubeconfig.is_file()
    assert oct(cluster.kubeconfig.stat().st_mode & 0o777) == oct(0o600)
    assert str(private / "kubeconfig") in standins.calls("kind")[-1]
    artifacts = tmp_path / "artifacts"
    assert sorted(p.name for p in artifacts.iterdir()) == ["kind.log"]
    text = cluster.kubeconfig.read_text()
    secret_lines = [
        line.strip() for line in text.splitlines() if "token" in line or "-data" in line
    ]
    log = (artifacts / "kind.log").read_text()
    assert secret_lines and not [line for line in secret_lines if line in log]
    assert await cluster.check_reachable()
    assert await cluster.delete() is True


async def test_a_failed_create_is_cleared_and_retried_once(
    tmp_path: Path, standins: Standins, kubeapi: KubeAPIServer
) -> None:
    standins.set("fail_create", "1")
    lines: list[str] = []
    cluster = make_cluster(tmp_path, lines)
    await cluster.create()
    assert standins.commands("kind") == [
        "get clusters",
        "create cluster",
        "delete cluster",
        "create cluster",
    ]
    assert any("retrying once" in line and "Multi-User System" in line for line in lines)
    assert cluster.kubeconfig.is_file()


async def test_two_failed_creates_give_one_clear_line(tmp_path: Path, standins: Standins) -> None:
    standins.set("fail_create", "2")
    cluster = make_cluster(tmp_path)
    with pytest.raises(EnvironmentSetupError) as caught:
        await cluster.create()
    message = str(caught.value)
    assert "\n" not in message
    assert "failed twice" in message and "Multi-User System" in message and "kind.log" in message
    assert standins.commands("kind").count("create cluster") == 2
    # The half-made cluster is ours: teardown removes it.
    assert await cluster.delete() is True
    assert standins.clusters() == []


async def test_missing_kind_fails_fast(tmp_path: Path, standins: Standins) -> None:
    standins.remove("kind")
    with pytest.raises(EnvironmentSetupError, match="kind not found on PATH.*kind.sigs.k8s.io"):
        await make_cluster(tmp_path).create()
    assert standins.calls() == []


async def test_missing_docker_fails_fast(tmp_path: Path, standins: Standins) -> None:
    standins.remove("docker")
    with pytest.raises(EnvironmentSetupError, match="Docker is not installed"):
        await make_cluster(tmp_path).create()
    assert standins.calls("kind") == []


async def test_docker_not_running_is_said_before_kind_runs(
    tmp_path: Path, standins: Standins
) -> None:
    standins.set("docker_down")
    cluster = make_cluster(tmp_path)
    with pytest.raises(EnvironmentSetupError) as caught:
        await cluster.create()
    assert str(caught.value).startswith("Docker is not running")
    assert "Is the docker daemon running?" in str(caught.value)
    assert standins.calls("kind") == []
    assert not cluster.created and await cluster.delete() is False


async def test_an_existing_cluster_is_reused_when_asked_and_never_deleted(
    tmp_path: Path, standins: Standins, kubeapi: KubeAPIServer
) -> None:
    standins.existing("other", "kf-test")
    cluster = make_cluster(tmp_path, reuse=True)
    await cluster.create()
    assert standins.commands("kind") == ["get clusters", "get kubeconfig"]
    assert not cluster.created
    assert await cluster.check_reachable()
    assert await cluster.delete() is False
    assert standins.commands("kind")[-1] == "get kubeconfig"
    assert sorted(standins.clusters()) == ["kf-test", "other"]


async def test_a_reused_cluster_s_kubeconfig_is_written_private_and_never_logged(
    tmp_path: Path, standins: Standins, kubeapi: KubeAPIServer
) -> None:
    """``kind get kubeconfig`` prints the cluster's credentials: they go to the kubeconfig
    (this user's only), and kind.log notes only how much was left out."""
    standins.existing("kf-test")
    cluster = make_cluster(tmp_path, reuse=True)
    await cluster.create()

    text = cluster.kubeconfig.read_text()
    assert oct(cluster.kubeconfig.stat().st_mode & 0o777) == oct(0o600)
    secret_lines = [
        line.strip() for line in text.splitlines() if "token" in line or "-data" in line
    ]
    log = (tmp_path / "artifacts" / "kind.log").read_text()
    assert secret_lines and not [line for line in secret_lines if line in log]
    assert "bytes of output not logged: they hold credentials" in log


async def test_a_reused_cluster_s_kubeconfig_goes_to_a_kubeconfig_dir_not_yet_made(
    tmp_path: Path, standins: Standins, kubeapi: KubeAPIServer
) -> None:
    standins.existing("kf-test")
    private = tmp_path / "private" / "run"
    cluster = make_cluster(tmp_path, reuse=True, kubeconfig_dir=private)
    await cluster.create()

    assert cluster.kubeconfig == private / "kubeconfig" and cluster.kubeconfig.is_file()
    assert oct(cluster.kubeconfig.stat().st_mode & 0o777) == oct(0o600)
    assert sorted(p.name for p in (tmp_path / "artifacts").iterdir()) == ["kind.log"]
    assert await cluster.check_reachable()


async def test_an_existing_cluster_is_not_taken_over_without_reuse(
    tmp_path: Path, standins: Standins
) -> None:
    standins.existing("kf-test")
    cluster = make_cluster(tmp_path)
    with pytest.raises(
        EnvironmentSetupError, match="already exists.*kind delete cluster --name kf-test"
    ):
        await cluster.create()
    assert "create cluster" not in standins.commands("kind")
    assert await cluster.delete() is False
    assert standins.clusters() == ["kf-test"]


async def test_a_kept_cluster_is_not_deleted_and_the_log_says_how(
    tmp_path: Path, standins: Standins, kubeapi: KubeAPIServer
) -> None:
    lines: list[str] = []
    cluster = make_cluster(tmp_path, lines, keep=True)
    await cluster.create()
    assert await cluster.delete() is False
    assert "delete cluster" not in standins.commands("kind")
    assert any("kind delete cluster --name kf-test" in line for line in lines)


async def test_a_failed_delete_says_how_to_delete_by_hand(
    tmp_path: Path, standins: Standins, kubeapi: KubeAPIServer
) -> None:
    cluster = make_cluster(tmp_path)
    await cluster.create()
    standins.set("fail_delete")
    with pytest.raises(
        EnvironmentSetupError, match="docker rm failed.*by hand: kind delete cluster"
    ):
        await cluster.delete()


async def test_a_cancelled_create_kills_kind_and_its_children(
    tmp_path: Path, standins: Standins
) -> None:
    fifo = standins.bin / "hang_create"
    os.mkfifo(fifo)
    cluster = make_cluster(tmp_path)

    def read_pids() -> list[int]:
        with open(fifo) as pipe:
            return [int(pid) for pid in pipe.read().split()]

    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(cluster.create)
            pids = await anyio.to_thread.run_sync(read_pids)
            tg.cancel_scope.cancel()
    for pid in pids:
        await wait_gone(pid)
    # Containers a cancelled create left behind are this run's to delete.
    fifo.unlink()
    assert cluster.created and await cluster.delete() is True


async def test_nodes_wait_wakes_when_a_not_ready_node_turns_ready(
    tmp_path: Path, standins: Standins, kubeapi: KubeAPIServer
) -> None:
    await set_ready(kubeapi, "fake-node-0", False)
    saw_not_ready = anyio.Event()
    lines: list[str] = []

    def log(line: str) -> None:
        lines.append(line)
        if "fake-node-0: NotReady (KubeletNotReady)" in line:
            saw_not_ready.set()

    cluster = KindCluster("kf-test", workdir=tmp_path / "artifacts", log=log)
    await cluster.create()
    result: list[str] = []

    async def wait() -> None:
        result.extend(await cluster.wait_nodes_ready(time.monotonic() + WAIT))

    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(wait)
            await saw_not_ready.wait()
            assert not result
            await set_ready(kubeapi, "fake-node-0", True)
    assert result == ["fake-node-0", "fake-node-1"]
    assert "node fake-node-0: Ready" in lines


async def test_nodes_wait_deadline_names_the_node_that_is_not_ready(
    tmp_path: Path, standins: Standins, kubeapi: KubeAPIServer
) -> None:
    await set_ready(kubeapi, "fake-node-1", False)
    cluster = make_cluster(tmp_path)
    await cluster.create()
    # The deadline is only ever reached here (fake-node-1 stays NotReady), so it can be
    # long enough for a loaded machine to list the nodes first: 0.5 s was not.
    with pytest.raises(EnvironmentSetupError) as caught:
        await cluster.wait_nodes_ready(time.monotonic() + 5)
    assert "fake-node-1 NotReady (KubeletNotReady)" in str(caught.value)
    assert "fake-node-0" not in str(caught.value)


async def test_an_unreachable_api_server_is_reported(tmp_path: Path, standins: Standins) -> None:
    async with KubeAPIServer() as server:
        server.write_kubeconfig(standins.bin / "source-kubeconfig")
    cluster = make_cluster(tmp_path)  # the server is gone: its port refuses connections
    await cluster.create()
    with pytest.raises(EnvironmentSetupError, match="API server is not reachable"):
        await cluster.check_reachable(timeout=5)
