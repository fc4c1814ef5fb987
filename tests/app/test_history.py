"""Latency history: append, trend, regression check, the history command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.history import Entry, HistoryError, append, baseline, load, regression, sparkline


def entry(
    latency: float | None, outcome: str = "passed", ttft: float | None = None, model: str = "m"
) -> Entry:
    return Entry(
        at="2026-11-25T10:00:00",
        suite="kaito",
        model=model,
        outcome=outcome,
        latency_ms=latency,
        ttft_ms=ttft,
        tokens_per_second=40.0,
        completion_tokens=50,
    )


def test_append_and_load_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "h" / "history.jsonl"
    append(path, [entry(100), entry(120, ttft=30)])
    append(path, [entry(None, outcome="failed")])
    got = load(path)
    assert [e.latency_ms for e in got] == [100, 120, None]
    assert got[1].ttft_ms == 30 and got[2].outcome == "failed"


def test_a_corrupt_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    path.write_text('{"at": "x", "suite": "s", "model": "m", "outcome": "passed"}\nnot json\n')
    with pytest.raises(HistoryError, match=r"history.jsonl:2"):
        load(path)


def test_baseline_is_the_median_of_recent_passed_runs_of_the_same_model() -> None:
    entries = [
        entry(100),
        entry(5000, outcome="failed"),
        entry(110),
        entry(90),
        entry(9999, model="other"),
        entry(1000),
    ]
    assert baseline(entries, suite="kaito", model="m") == 105  # median of 100, 110, 90, 1000
    assert baseline(entries, suite="kaito", model="m", window=2) == 545
    assert baseline([], suite="kaito", model="m") is None


def test_regression_threshold() -> None:
    assert regression(140, 100, 50) is None
    reason = regression(160, 100, 50)
    assert reason is not None and "+60% > 50%" in reason and "160 ms" in reason
    assert regression(10_000, None, 50) is None


def test_sparkline_scales_and_keeps_gaps() -> None:
    assert sparkline([1, 2, 3, 4, 5, 6, 7, 8]) == "▁▂▃▄▅▆▇█"
    assert sparkline([5, None, 5]) == "▁ ▁"
    assert sparkline([]) == ""


def test_history_command_table_and_png(tmp_path: Path) -> None:
    append(tmp_path / "history.jsonl", [entry(100 + i * 10, ttft=20 + i) for i in range(12)])
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator",
            "history",
            "--artifacts-dir",
            str(tmp_path),
            "--last",
            "5",
            "--png",
            str(tmp_path / "chart.png"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={"COLUMNS": "120", "PATH": ""},
    )
    assert out.returncode == 0, out.stderr
    assert "last 5 of 12 runs" in out.stdout and "latency" in out.stdout
    assert (tmp_path / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_history_command_without_history_and_with_a_bad_file(tmp_path: Path) -> None:
    run = [sys.executable, "-m", "orchestrator", "history", "--artifacts-dir", str(tmp_path)]
    out = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "no history yet" in out.stderr
    (tmp_path / "history.jsonl").write_text("{{{\n")
    out = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "history.jsonl:1" in out.stderr and "Traceback" not in out.stderr


def test_the_table_keeps_dates_whole_at_80_columns() -> None:
    from rich.console import Console

    from orchestrator.history import render

    entries = [
        Entry(
            at=f"2026-11-2{i}T10:0{i}:00.123456Z",
            suite="kaito",
            model="llama3.2:1b",
            outcome="failed" if i == 3 else "passed",
            latency_ms=900.0 + i,
            ttft_ms=80.0 + i,
            tokens_per_second=41.5,
        )
        for i in range(1, 6)
    ]
    console = Console(width=80, record=True, color_system=None)
    console.print(render(entries, last=4))
    text = console.export_text()
    assert all(len(line) <= 80 for line in text.splitlines())
    # Numbered from the whole history; suite and model, shared by every row, in the title.
    assert "last 4 of 5 runs (kaito, llama3.2:1b)" in text
    rows = [line for line in text.splitlines() if "2026-11-2" in line]
    assert [row.replace("│", " ").split()[:3] for row in rows] == [
        [str(i), f"2026-11-2{i}", f"10:0{i}"] for i in range(2, 6)
    ]
    assert "failed" in rows[1] and "903" in rows[1] and "83" in rows[1]


def test_the_chart_has_a_readable_axis_for_each_measure_and_marks_failures() -> None:
    pytest.importorskip("matplotlib")
    from orchestrator.history import chart

    undated = [entry(1000.0 + i, ttft=20.0 + i) for i in range(4)]
    undated = [Entry(**{**e.__dict__, "at": ""}) for e in undated]
    undated[2] = Entry(**{**undated[2].__dict__, "outcome": "failed", "latency_ms": None})
    fig = chart(undated)
    latency, ttft = fig.axes
    # Each measure on its own scale: TTFT does not lie flat under a latency 50x larger.
    assert latency.get_ylim()[1] > 1000 and ttft.get_ylim()[1] < 100
    fig.canvas.draw()
    labels = [t.get_text() for t in ttft.get_xticklabels() if t.get_text()]
    assert labels and all(label.lstrip("−-").isdigit() for label in labels)
    assert [line.get_xdata()[0] for line in latency.lines if line.get_label() == "failed run"] == [
        3
    ]
    dated = [
        Entry(**{**e.__dict__, "at": f"2026-11-2{i}T10:00:00Z"}) for i, e in enumerate(undated)
    ]
    fig = chart(dated)
    fig.canvas.draw()
    labels = " ".join(t.get_text() for t in fig.axes[1].get_xticklabels())
    assert "Nov" in labels or "2026" in labels or "-2" in labels
