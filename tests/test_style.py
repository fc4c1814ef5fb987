"""Lint, format and types are checked by the tests: a style or type slip fails the build like a bug."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _ruff(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_ruff_lint_is_clean() -> None:
    result = _ruff("check", "--output-format", "concise", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_is_clean() -> None:
    result = _ruff("format", "--check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


#: The example flows are packages of their own, typed to the same standard.
EXAMPLES = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "examples").glob("*/*.py"))


# mypy from a fresh clone's cold cache is 6-7 CPU-seconds on one core: at the end of the run
# it held the last worker alone; marked, it starts with the long tests (conftest.py).
@pytest.mark.long
def test_mypy_strict_is_clean() -> None:
    assert EXAMPLES, "no example flow found under examples/"
    # The settings (strict, the pydantic plugin) live in pyproject.toml's [tool.mypy], so
    # that an editor's mypy and this test agree.
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "orchestrator", *EXAMPLES],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
