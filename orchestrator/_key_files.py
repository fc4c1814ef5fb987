"""A kubeconfig's inline client key never lands in a file that outlives the run.

kubernetes-asyncio hands its TLS context file names. For a kubeconfig that carries
its material inline (``client-key-data``, ``client-certificate-data``,
``certificate-authority-data``: what kind writes, and what a credential plugin that
answers with a client certificate gives), its loader writes each to a temporary file
(``tempfile.mkstemp`` in the system's temporary directory) and removes them only at
interpreter exit, with ``atexit``. A run that is killed (SIGKILL: the OOM killer, a
cancelled CI job) leaves the cluster's client key in ``/tmp``.

While :func:`key_files_in_memory` is open, the loader writes them where no kill can
leave them behind instead:

- on Linux, in a memory file (``memfd_create``) that no directory names: the loader
  and OpenSSL open it as ``/proc/self/fd/N``, and the kernel frees it with the last
  descriptor, when the block ends or the process dies, however it dies;
- elsewhere, in a private directory (``mkdtemp``: mode 0700, the files 0600) that the
  end of the block removes. A kill inside the block (a few synchronous milliseconds
  once the files are written) can still leave it; nowhere else can.

The block can end as soon as the ApiClient is built: its REST client reads the files
exactly once, into the TLS context it keeps (``ssl.create_default_context(cafile=...)``,
``load_cert_chain``). Nothing reads them again: kubernetes-asyncio builds no other
context for that client, and a credential plugin is run again only by its
``refresh_token`` loop (which sets a new bearer token, never new files) or by a new
load, which is a block of its own. A load outside any block (someone else's code in the
same process) keeps the library's own behaviour.

Both the clients (a cluster under test) and the sandbox (its stand-ins' client of the
cluster they run on, kind's kubeconfig among them) load kubeconfigs through the same
library, which this patches once per process: one module for both, outside either.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

from ._fileio import write_all

#: The files the load in progress (in this task) has written, or None outside a block.
_SCOPE: ContextVar[_Written | None] = ContextVar("orchestrator_key_files", default=None)
#: Marks kubernetes-asyncio's loader as patched (once per process).
_PATCHED = "_orchestrator_in_memory"


def memory_files_supported() -> bool:
    """Whether the files can be memory files here (Linux, with ``/proc`` mounted)."""
    return (
        sys.platform == "linux"
        and hasattr(os, "memfd_create")
        and os.path.isdir(f"/proc/{os.getpid()}/fd")
    )


class _Written:
    """What one block wrote: memory files' descriptors, or a private directory."""

    def __init__(self, in_memory: bool) -> None:
        self.in_memory = in_memory
        self.descriptors: list[int] = []
        self.directory: str | None = None
        #: Every name handed out, so that the caller can forget them once they are gone.
        self.paths: set[str] = set()

    def write(self, content: bytes) -> str:
        if self.in_memory:
            fd = os.memfd_create("kubeconfig", os.MFD_CLOEXEC)
            self.descriptors.append(fd)
            write_all(fd, content)
            path = f"/proc/self/fd/{fd}"
            self.paths.add(path)
            return path
        if self.directory is None:
            self.directory = tempfile.mkdtemp(prefix="orchestrator-kubeconfig-")
        fd, path = tempfile.mkstemp(dir=self.directory)  # 0600, in a 0700 directory
        try:
            write_all(fd, content)
        finally:
            os.close(fd)
        self.paths.add(path)
        return path

    def remove(self) -> None:
        descriptors, self.descriptors = self.descriptors, []
        for fd in descriptors:
            os.close(fd)
        directory, self.directory = self.directory, None
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def key_files_in_memory(in_memory: bool | None = None) -> Iterator[set[str]]:
    """Within the block, the kubeconfig loader's temporary files are memory files (or a
    private directory's, where memory files are not supported, or when ``in_memory``
    is False); leaving it removes them. Build the ApiClient inside it.

    Yields the names handed out (filled in as the loader writes): once the block has
    ended they name nothing, or, for a memory file, whatever descriptor took its number
    since, so a configuration that holds one must forget it.
    """
    _patch_loader()
    written = _Written(memory_files_supported() if in_memory is None else in_memory)
    token = _SCOPE.set(written)
    try:
        yield written.paths
    finally:
        _SCOPE.reset(token)
        written.remove()


def forget_written(cfg: Any, written: set[str]) -> None:
    """Clear the file names of a kubernetes-asyncio ``Configuration`` that the block wrote:
    their content was read once, into the TLS context, and the names are gone since."""
    for name in ("ssl_ca_cert", "cert_file", "key_file"):
        if getattr(cfg, name, None) in written:
            setattr(cfg, name, None)


def _patch_loader() -> None:
    from kubernetes_asyncio.config import kube_config

    holder = kube_config.FileOrData
    if getattr(holder, _PATCHED, False):
        return
    own = holder._create_temp_file_with_content

    def create_temp_file_with_content(self: Any, content: bytes | str) -> str:
        written = _SCOPE.get()
        if written is None:
            return str(own(self, content))
        return written.write(content.encode() if isinstance(content, str) else content)

    setattr(holder, "_create_temp_file_with_content", create_temp_file_with_content)  # noqa: B010
    setattr(holder, _PATCHED, True)
