"""Human-facing progress on the console.

On an interactive terminal a live table shows where the run is and how much of the
budget is left; anywhere else (CI logs, pipes, NO_COLOR) output is plain lines, since
cursor movement turns a CI log into noise. Either way the run ends with a summary table
and a one-line verdict.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ._record import PhaseRecord, RunRecord

ICONS = {
    "pending": ("·", "dim"),
    "running": ("…", "yellow"),
    "passed": ("✔", "green"),
    "failed": ("✘", "red"),
    "skipped": ("-", "dim"),
    "interrupted": ("!", "magenta"),
}
VERDICT_STYLES = {"passed": "bold green", "failed": "bold red", "interrupted": "bold magenta"}


def wants_live(console: Console) -> bool:
    """A live view only where a person watches a real terminal that wants colour
    (NO_COLOR, see no-color.org, also turns the animation off)."""
    return console.is_terminal and not console.is_dumb_terminal and not os.environ.get("NO_COLOR")


class ConsoleReporter:
    """Progress and the final verdict on a ``rich`` console."""

    def __init__(
        self,
        console: Console | None = None,
        *,
        live: bool | None = None,
        junit_path: str | os.PathLike[str] | None = None,
        refresh_per_second: float = 4,
        prefix: bool = False,
    ) -> None:
        self.console = console if console is not None else Console()
        #: Several runs share one console: lines carry the suite name, and the live
        #: view (one per console) is off.
        self.prefix = prefix
        self.live = False if prefix else (wants_live(self.console) if live is None else live)
        self.junit_path = Path(junit_path) if junit_path is not None else None
        self._refresh = refresh_per_second
        self._view: Live | None = None
        self._record: RunRecord | None = None
        self._run_started = time.monotonic()
        self._phase_started: dict[str, float] = {}
        #: Plain lines to a file or pipe go straight to it: rich's rendering costs about
        #: half a millisecond a line, which fifty runs' logs turn into most of a second.
        self._plain_file = None if self.live or self.console.is_terminal else self.console.file

    # -- reporter protocol -----------------------------------------------------------

    def run_started(self, record: RunRecord) -> None:
        self._record = record
        self._run_started = time.monotonic()
        if self.live:
            self._view = Live(
                console=self.console,
                refresh_per_second=self._refresh,
                get_renderable=self._render_live,
                transient=False,
            )
            self._view.start()
            return
        props = ", ".join(f"{k}={v}" for k, v in record.properties.items())
        self._line(
            ("" if self.prefix else f"{record.suite}: ") + f"budget {record.budget_total:g} s "
            f"({record.budget_reserve:g} s reserved for diagnose and cleanup)"
            + (f"; {props}" if props else "")
        )

    def phase_started(self, record: RunRecord, phase: PhaseRecord) -> None:
        self._phase_started[phase.name] = time.monotonic()
        if not self.live:
            allowed = "" if phase.allowed is None else f" (allowed {phase.allowed:.1f} s)"
            self._line(f"{_stamp(phase.offset)} {phase.title} ... started{allowed}")

    def phase_finished(self, record: RunRecord, phase: PhaseRecord) -> None:
        if self.live:
            if self._view is not None:
                self._view.refresh()
            return
        end = (phase.offset or 0.0) + (phase.duration or 0.0) if phase.offset is not None else None
        took = f" ({phase.duration:.1f}s)" if phase.duration is not None else ""
        reason = f": {phase.reason}" if phase.reason and phase.status != "passed" else ""
        self._line(f"{_stamp(end)} {phase.title} ... {phase.status}{took}{reason}")

    def run_finished(self, record: RunRecord) -> None:
        try:
            self.close()
        finally:
            if not self.prefix:
                # Runs sharing a console get one table for all of them instead (runs_table).
                self.console.print(summary_table(record))
            cleanup = record.cleanup
            if cleanup.detail and cleanup.status in ("skipped", "failed", "interrupted"):
                # Kept or left-behind resources: say how to look at them and remove them.
                self._line(f"Cleanup {cleanup.status}; to inspect and clean up:")
                for line in cleanup.detail.splitlines():
                    self._line(f"  {line}")
            self.console.print(self._verdict(record), soft_wrap=True)

    def close(self) -> None:
        """Stop the live view; safe to call more than once and on any path."""
        view, self._view = self._view, None
        if view is not None and view.is_started:
            view.stop()

    def __enter__(self) -> ConsoleReporter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- rendering ---------------------------------------------------------------------

    def _line(self, text: str) -> None:
        if self.prefix and self._record is not None:
            text = f"{self._record.suite}: {text}"
        if self._plain_file is not None:
            self._plain_file.write(text + "\n")
            return
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def _render_live(self) -> RenderableType:
        record = self._record
        if record is None:
            return Text("")
        now = time.monotonic()
        table = Table(box=None, show_header=True, header_style="bold", pad_edge=False)
        table.add_column("", width=1)
        table.add_column("Phase")
        table.add_column("Elapsed", justify="right")
        table.add_column("Allowed", justify="right")
        table.add_column("Note", overflow="ellipsis", no_wrap=True)
        rows = [*record.phases, *([record.diagnose] if record.diagnose else []), record.cleanup]
        for phase in rows:
            icon, style = ICONS[phase.status]
            if phase.status == "running" and phase.name in self._phase_started:
                elapsed = f"{now - self._phase_started[phase.name]:.1f}s"
            elif phase.duration is not None:
                elapsed = f"{phase.duration:.1f}s"
            else:
                elapsed = ""
            allowed = f"{phase.allowed:.0f}s" if phase.allowed is not None else ""
            note = phase.reason if phase.status != "passed" and phase.reason else ""
            table.add_row(Text(icon, style=style), phase.title, elapsed, allowed, Text(note))
        total = now - self._run_started
        left = max(0.0, record.budget_total - total)
        footer = Text(f"elapsed {total:.1f} s · budget left {left:.0f} s", style="dim")
        return Group(Text(record.suite, style="bold"), table, footer)

    def _verdict(self, record: RunRecord) -> Text:
        outcome = record.outcome or "failed"
        text = Text(outcome.upper(), style=VERDICT_STYLES.get(outcome, "bold"))
        spent = f" in {record.time_spent:.1f} s" if record.time_spent is not None else ""
        text.append(f" {record.suite}{spent} (exit code {record.exit_code})")
        failed = next((p for p in record.phases if p.status == "failed"), None)
        if failed is not None:
            text.append(f"; failed at {failed.title}: {failed.reason}")
        elif record.cleanup.status == "failed":
            text.append(f"; cleanup failed: {record.cleanup.reason}")
        if record.interrupted_by:
            text.append(f"; interrupted by {record.interrupted_by}")
        if self.junit_path is not None:
            text.append(f"; JUnit report: {self.junit_path}")
        return text


def summary_table(record: RunRecord) -> Table:
    """Phase, outcome, duration and reason for every step of the run."""
    table = Table(title=f"{record.suite}: summary", title_justify="left")
    table.add_column("Phase")
    table.add_column("Outcome")
    table.add_column("Duration", justify="right")
    table.add_column("Reason", overflow="fold")
    for phase in record.phase_records():
        _, style = ICONS[phase.status]
        duration = f"{phase.duration:.1f}s" if phase.duration is not None else "-"
        table.add_row(
            phase.title, Text(phase.status, style=style), duration, Text(phase.reason or "")
        )
    return table


def runs_table(records: list[RunRecord]) -> Table:
    """One row per run, for runs that shared a console: the outcome, the time, and
    where and why a failed run stopped."""
    table = Table(title=f"{len(records)} runs: summary", title_justify="left")
    table.add_column("Run")
    table.add_column("Outcome")
    table.add_column("Duration", justify="right")
    table.add_column("Failed at / reason", overflow="fold")
    for record in records:
        outcome = record.outcome or "failed"
        style = VERDICT_STYLES.get(outcome, "bold").replace("bold ", "")
        failed = next((p for p in record.phases if p.status == "failed"), None)
        if failed is not None:
            why = f"{failed.title}: {failed.reason}"
        elif record.cleanup.status == "failed":
            why = f"Cleanup: {record.cleanup.reason}"
        else:
            why = ""
        spent = f"{record.time_spent:.1f}s" if record.time_spent is not None else "-"
        table.add_row(record.suite, Text(outcome, style=style), spent, Text(why))
    return table


def _stamp(offset: float | None) -> str:
    return f"[{offset or 0.0:5.1f}s]"
