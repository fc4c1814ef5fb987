"""Writing to a file descriptor, in one leaf module that imports nothing else.

The engine's reports (:mod:`orchestrator.engine._atomic`) and the key files a kubeconfig
load writes (:mod:`orchestrator._key_files`, which the clients and the sandbox use) both
write raw descriptors, and the engine may import neither of the others' layers.
"""

from __future__ import annotations

import os


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data`` to ``fd``.

    ``os.write`` may write less than it was given (a signal in the middle, a pipe or a
    full disk's last blocks): what it returns says how much went, and the rest is sent
    again until nothing is left. Usually the first call takes it all.
    """
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
