"""The environment's command log: masked as it is written, stream by stream."""

from __future__ import annotations

from pathlib import Path

from orchestrator.engine import redactor
from orchestrator.environment._process import MaskedLog

SECRET = "kf-4f1d9c27b3e8a650"


def test_a_secret_split_in_one_stream_stays_masked_when_the_other_writes_between(
    tmp_path: Path,
) -> None:
    # A child's stdout and stderr are read apart and their pieces interleave in the
    # log: stderr's piece between the halves of a secret on stdout must not let
    # either half out.
    path = tmp_path / "kind.log"
    redactor.add(SECRET)
    try:
        log = MaskedLog(path)
        log.write(f"token {SECRET[:9]}".encode(), "stdout")
        log.write(b"a warning on stderr\n", "stderr")
        log.write(f"{SECRET[9:]} accepted\n".encode(), "stdout")
        log.close()
    finally:
        redactor.clear()
    text = path.read_text()
    # (Each masker holds back what may start a secret, so the pieces need not stay whole.)
    assert "token " in text and "*** accepted" in text and "a warning on" in text
    assert SECRET[:9] not in text and SECRET[9:] not in text, text
