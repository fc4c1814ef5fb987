"""The README's console pictures come from recorded runs through the console's own code."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "docs" / "console" / "render.py"


def load_script():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("render_console", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["passing", "failing"])
def test_the_recorded_runs_render_with_every_phase_and_time(name: str, tmp_path: Path) -> None:
    recorded = json.loads((SCRIPT.parent / f"{name}.json").read_text())
    text = load_script().render(SCRIPT.parent / f"{name}.json", tmp_path / f"{name}.svg")
    for phase in recorded["phases"]:
        row = next(line for line in text.splitlines() if f"│ {phase['title']} " in line)
        assert phase["status"] in row
        if phase["duration"] is not None:
            assert f"{phase['duration']:.1f}s" in row
    verdict = next(line for line in text.splitlines() if line.startswith(("PASSED", "FAILED")))
    assert verdict.startswith(recorded["outcome"].upper())
    svg = (tmp_path / f"{name}.svg").read_text()
    assert svg.startswith("<svg") and "Install&#160;KAITO" in svg


def test_the_readme_shows_both_pictures() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "docs/console/passing.svg" in readme and "docs/console/failing.svg" in readme
    assert "python docs/console/render.py" in readme
