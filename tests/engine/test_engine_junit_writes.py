"""How reports reach the disk: whole or not at all, readable, nothing left behind."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from orchestrator.engine import _atomic
from orchestrator.engine._atomic import atomic_write_text


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.parametrize("durable", [True, False])
def test_a_write_replaces_the_file_whole_and_leaves_no_temporary(
    tmp_path: Path, durable: bool
) -> None:
    path = tmp_path / "new" / "dir" / "junit.xml"  # made when missing
    atomic_write_text(path, "first\n", durable=durable)
    before = path.stat().st_ino
    text = "<a>\u00e9\u4e2d \U0001f600</a>\n" * 5000  # non-ASCII, larger than a page
    assert atomic_write_text(path, text, durable=durable, masked=True) == path
    assert path.read_bytes() == text.encode("utf-8")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # others may read a report
    assert leftovers(path.parent) == []
    # A new file renamed over the old one: a reader holding the old one keeps it whole.
    # (The new one is made while the old one exists, so its inode cannot be the old one's.)
    assert path.stat().st_ino != before


def test_a_failed_write_keeps_the_previous_version_and_removes_its_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "junit.xml"
    atomic_write_text(path, "old\n")

    def full(fd: int, data: object) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_atomic.os, "write", full)
    with pytest.raises(OSError, match="No space"):
        atomic_write_text(path, "new\n")
    monkeypatch.undo()
    assert path.read_text() == "old\n"
    assert leftovers(tmp_path) == []


def test_a_short_write_is_completed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.write
    monkeypatch.setattr(_atomic.os, "write", lambda fd, data: real(fd, bytes(data)[:7]))
    atomic_write_text(tmp_path / "r.json", '{"a": "0123456789abcdef"}\n')
    assert (tmp_path / "r.json").read_text() == '{"a": "0123456789abcdef"}\n'


def test_a_temporary_name_left_by_a_killed_process_is_passed_over(tmp_path: Path) -> None:
    """A process killed mid-write leaves its temporary file; a later process may get
    the same pid and count to the same number."""
    path = tmp_path / "junit.xml"
    upcoming = next(_atomic._numbers) + 1
    stale = tmp_path / f".junit.xml.{os.getpid()}.{upcoming}.tmp"
    stale.write_text("half a report")
    atomic_write_text(path, "whole\n")
    assert path.read_text() == "whole\n"
    assert stale.read_text() == "half a report"  # not ours to remove, nor to write into


def test_a_symlink_at_a_temporary_name_is_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep")
    upcoming = next(_atomic._numbers) + 1
    (tmp_path / f".junit.xml.{os.getpid()}.{upcoming}.tmp").symlink_to(victim)
    atomic_write_text(tmp_path / "junit.xml", "report\n")
    assert victim.read_text() == "keep"
    assert (tmp_path / "junit.xml").read_text() == "report\n"


def test_threads_writing_one_report_each_leave_a_whole_version(tmp_path: Path) -> None:
    path = tmp_path / "junit.xml"
    versions = [f"{i}\n" * 2000 for i in range(8)]
    start = threading.Barrier(len(versions))

    def write(text: str) -> None:
        start.wait()
        for _ in range(20):
            atomic_write_text(path, text, durable=False, masked=True)

    threads = [threading.Thread(target=write, args=(v,)) for v in versions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert path.read_text() in versions
    assert leftovers(tmp_path) == []


def test_a_report_is_masked_unless_its_writer_masked_it(tmp_path: Path) -> None:
    from orchestrator.engine import redactor

    secret = "atomic-secret-0123456789"
    redactor.add(secret)
    try:
        atomic_write_text(tmp_path / "a.txt", f"token {secret}\n")
        atomic_write_text(tmp_path / "b.txt", '{"n": 5}\n', masked=True)
    finally:
        redactor.clear()
    assert (tmp_path / "a.txt").read_text() == "token ***\n"
    assert (tmp_path / "b.txt").read_text() == '{"n": 5}\n'


def test_a_directory_that_cannot_be_made_is_an_os_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError):
        atomic_write_text(blocker / "junit.xml", "x")
