"""Render recorded runs as the console shows them, to SVG for the README.

    python docs/console/render.py            # the SVGs from the recorded runs here
    python docs/console/render.py --record   # record the runs again first (the sandbox)

A recorded run is the ``run.json`` of a real ``run --sandbox``: ``passing.json`` with
the defaults, ``failing.json`` with ``--sandbox-fault crash_loop=true``. The picture is
the end of the run in a terminal: the summary, any hints, the verdict and the reports,
drawn by the same code as the console (``ConsoleReporter``), at 100 columns.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console

from orchestrator.engine import ConsoleReporter, RunRecord

HERE = Path(__file__).resolve().parent
RUNS = {"passing": [], "failing": ["--sandbox-fault", "crash_loop=true"]}
WIDTH = 100


def record(name: str, extra: list[str]) -> None:
    """Run the flow on the sandbox and keep its run.json as ``NAME.json``."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "orchestrator", "run", "--sandbox", *extra,
             "--artifacts-dir", "test-results", "--no-live"],
            cwd=tmp,
            check=False,
            stdout=subprocess.DEVNULL,
            env={k: v for k, v in os.environ.items() if k not in ("CI", "API_URL", "KUBECONFIG")},
        )  # fmt: skip
        shutil.copy(Path(tmp) / "test-results" / "run.json", HERE / f"{name}.json")


def render(run_json: Path, svg: Path, width: int = WIDTH) -> str:
    """Draw one recorded run to ``svg``; returns the text it shows."""
    run = RunRecord.model_validate(json.loads(run_json.read_text()))
    console = Console(
        file=io.StringIO(), width=width, record=True, force_terminal=True, color_system="truecolor"
    )
    reporter = ConsoleReporter(console, live=False)
    reporter.run_finished(run)
    console.print(
        "Reports: test-results/junit.xml, test-results/run.json", markup=False, highlight=False
    )
    if run.diagnose is not None:
        console.print(
            "Diagnostics (pods, logs, events): test-results/diagnostics",
            markup=False,
            highlight=False,
        )
    text = console.export_text(clear=False)
    console.save_svg(str(svg), title=f"orchestrator run --sandbox: {run.outcome}")
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", action="store_true", help="record the runs again first")
    args = parser.parse_args()
    for name, extra in RUNS.items():
        if args.record:
            record(name, extra)
        print(render(HERE / f"{name}.json", HERE / f"{name}.svg"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
