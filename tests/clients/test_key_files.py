"""A kubeconfig's inline client key is never a file that a killed run leaves behind.

kubernetes-asyncio writes inline key material to temporary files and removes them at
exit only; the client loads it through memory files (or a private directory it removes)
instead, and the TLS context still presents the key: a server that requires a client
certificate sees it. The sandbox's own Kubernetes client (its stand-ins' client of the
cluster they run on: kind's kubeconfig carries a key) loads the same way.
"""

from __future__ import annotations

import json
import os
import ssl
import stat
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _client_cert import client_key_pair, with_inline_client_key
from aiohttp import web

from orchestrator._key_files import key_files_in_memory, memory_files_supported
from orchestrator.clients import PODS, KubeClient
from orchestrator.sandbox._kube import Kube

pytestmark = pytest.mark.anyio


@pytest.fixture
def temporary_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The system's temporary directory, as the kubeconfig loader sees it, for this test."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    yield folder


def write_kubeconfig(path: Path, server: str, cert: bytes, key: bytes) -> Path:
    import base64

    cluster = {"server": server, "certificate-authority-data": base64.b64encode(cert).decode()}
    user = with_inline_client_key({}, cert, key)
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": cluster}],
                "users": [{"name": "u", "user": user}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    return path


def holding(folder: Path, key: bytes) -> list[str]:
    """The files under ``folder`` that hold ``key`` (its PEM body)."""
    body = b"".join(key.splitlines()[1:-1])
    return [
        str(p)
        for p in folder.rglob("*")
        if p.is_file() and body in b"".join(p.read_bytes().splitlines())
    ]


def open_files() -> list[str]:
    """What this process's descriptors name (the listing's own one is gone when read)."""
    links = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            links.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass
    return links


#: Loads a kubeconfig, reads pod ``x`` in ``default``, closes: returns the pod's name and
#: the file names the loaded configuration still holds (CA, certificate, key).
Load = Callable[[Path], Awaitable[tuple[str, tuple[Any, Any, Any]]]]


async def with_the_client(path: Path) -> tuple[str, tuple[Any, Any, Any]]:
    kube = await KubeClient.from_kubeconfig(str(path))
    try:
        pod = await kube.get(PODS, "x", "default")
        cfg = kube._api.configuration
        return pod["metadata"]["name"], (cfg.cert_file, cfg.key_file, cfg.ssl_ca_cert)
    finally:
        await kube.aclose()


async def with_the_sandbox(path: Path) -> tuple[str, tuple[Any, Any, Any]]:
    kube = await Kube.from_kubeconfig(path)
    try:
        pod = await kube.get("/api/v1/namespaces/default/pods/x")
        cfg = kube.api.configuration
        return pod["metadata"]["name"], (cfg.cert_file, cfg.key_file, cfg.ssl_ca_cert)
    finally:
        await kube.close()


@pytest.fixture(params=[with_the_client, with_the_sandbox], ids=["client", "sandbox"])
def load(request: pytest.FixtureRequest) -> Load:
    loader: Load = request.param
    return loader


async def test_the_client_key_is_presented_and_never_written_to_the_temporary_dir(
    tmp_path: Path, temporary_dir: Path, load: Load
) -> None:
    cert, key = client_key_pair(tmp_path)
    (tmp_path / "server.crt").write_bytes(cert)
    (tmp_path / "server.key").write_bytes(key)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(tmp_path / "server.crt", tmp_path / "server.key")
    server_tls.load_verify_locations(tmp_path / "server.crt")
    server_tls.verify_mode = ssl.CERT_REQUIRED  # no client certificate, no handshake
    seen: list[Any] = []

    async def pod(request: web.Request) -> web.Response:
        seen.append(request.transport.get_extra_info("peercert") if request.transport else None)
        return web.json_response({"kind": "Pod", "metadata": {"name": "x"}})

    app = web.Application()
    app.router.add_get("/api/v1/namespaces/default/pods/x", pod)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_tls)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        path = write_kubeconfig(tmp_path / "kubeconfig", f"https://127.0.0.1:{port}", cert, key)
        name, files = await load(path)
        assert name == "x"
        # The names the loader handed out are gone: nothing may read them again.
        assert files == (None, None, None)
    finally:
        await runner.cleanup()
    # The server saw the client's certificate: the key reached the TLS context.
    assert (
        seen
        and seen[0]
        and dict(x[0] for x in seen[0]["subject"])["commonName"] == ("orchestrator-test")
    )
    assert list(temporary_dir.iterdir()) == []
    if memory_files_supported():
        assert not [link for link in open_files() if "memfd:kubeconfig" in link]


async def test_without_memory_files_a_private_directory_is_removed_once_loaded(
    tmp_path: Path, temporary_dir: Path
) -> None:
    from kubernetes_asyncio import client, config

    cert, key = client_key_pair(tmp_path)
    path = write_kubeconfig(tmp_path / "kubeconfig", "https://127.0.0.1:9", cert, key)
    cfg = client.Configuration()
    with key_files_in_memory(in_memory=False) as written:
        await config.load_kube_config(config_file=str(path), client_configuration=cfg)
        folders = list(temporary_dir.iterdir())
        assert len(folders) == 1 and stat.S_IMODE(folders[0].stat().st_mode) == 0o700
        assert cfg.key_file in written and Path(cfg.key_file).parent == folders[0]
        assert stat.S_IMODE(Path(cfg.key_file).stat().st_mode) == 0o600
        assert holding(temporary_dir, key) == [cfg.key_file]
        api = client.ApiClient(configuration=cfg)  # reads them into its TLS context
    try:
        assert list(temporary_dir.iterdir()) == []
    finally:
        await api.close()


async def test_a_load_outside_the_block_keeps_the_librarys_behaviour(
    tmp_path: Path, temporary_dir: Path
) -> None:
    """The patched loader changes nothing for someone else's load in the same process
    (the reference this test suite compares against: the library leaves the key)."""
    from kubernetes_asyncio import client, config
    from kubernetes_asyncio.config import kube_config

    cert, key = client_key_pair(tmp_path)
    path = write_kubeconfig(tmp_path / "kubeconfig", "https://127.0.0.1:9", cert, key)
    with key_files_in_memory():
        pass  # the loader is patched from now on
    cfg = client.Configuration()
    await config.load_kube_config(config_file=str(path), client_configuration=cfg)
    try:
        assert holding(temporary_dir, key) == [cfg.key_file]
    finally:
        kube_config._cleanup_temp_files()


@pytest.mark.parametrize("in_memory", [True, False], ids=["memory-files", "private-dir"])
async def test_a_load_that_fails_once_the_key_is_written_leaves_nothing_behind(
    tmp_path: Path,
    temporary_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    in_memory: bool,
    load: Load,
) -> None:
    # The key is written, then the TLS context refuses it (not the certificate's key):
    # the load fails in the middle, after the files exist.
    if in_memory and not memory_files_supported():
        pytest.skip("no memory files here")
    from orchestrator import _key_files

    monkeypatch.setattr(_key_files, "memory_files_supported", lambda: in_memory)
    for pair in ("a", "b"):
        (tmp_path / pair).mkdir()
    cert, _ = client_key_pair(tmp_path / "a")
    _, other_key = client_key_pair(tmp_path / "b")
    path = write_kubeconfig(tmp_path / "kubeconfig", "https://127.0.0.1:9", cert, other_key)
    with pytest.raises(ssl.SSLError):
        await load(path)
    assert list(temporary_dir.iterdir()) == []
    if in_memory:
        assert not [link for link in open_files() if "memfd:kubeconfig" in link]
