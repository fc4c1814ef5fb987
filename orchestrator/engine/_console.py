"""Human-facing progress on the console.

On an interactive terminal a live table shows where the run is and how much of the
budget is left; anywhere else (CI logs, pipes, NO_COLOR) output is plain lines, since
cursor movement turns a CI log into noise. Either way the run ends with a summary and a
one-line verdict.

Two rules keep the output readable wherever it lands:

- In a terminal, whatever the width, every row keeps its phase, status and times: only
  the Note column shrinks (and is cut with an ellipsis), and a reason too long for it is
  printed in full below the table, where it wraps like a paragraph.
- Without a terminal nothing is wrapped at all: a CI log viewer wraps (or scrolls) by
  itself, and a path or command broken across two lines can no longer be copied.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ._record import PhaseRecord, RunRecord
from ._redact import redact

ICONS = {
    "pending": ("·", "dim"),
    "running": ("…", "yellow"),
    "passed": ("✔", "green"),
    "failed": ("✘", "red"),
    "skipped": ("-", "dim"),
    "interrupted": ("!", "magenta"),
}
VERDICT_STYLES = {"passed": "bold green", "failed": "bold red", "interrupted": "bold magenta"}
#: The Note column never gets narrower than this, even in a very narrow terminal.
NOTE_MIN_WIDTH = 12
#: Gap rich puts between two columns of a borderless table (padding 1 on each side).
_GAP = 2


def wants_live(console: Console) -> bool:
    """A live view only where a person watches a real terminal that wants colour
    (NO_COLOR, see no-color.org, also turns the animation off)."""
    return console.is_terminal and not console.is_dumb_terminal and not os.environ.get("NO_COLOR")


# -- what a row says -----------------------------------------------------------------


def phase_note(phase: PhaseRecord) -> str:
    """The Note of one phase: what a running phase waits for, what keeps failing and what it
    last saw, else the reason a phase did not pass."""
    if phase.status == "running":
        parts = []
        if phase.note:
            parts.append(f"waiting for {phase.note}")
        if phase.failing:
            parts.append(phase.failing)
        if phase.last_seen:
            parts.append(f"last seen: {phase.last_seen}")
        return "; ".join(parts)
    if phase.status != "passed" and phase.reason:
        return phase.reason
    return ""


def _elapsed(phase: PhaseRecord, run_elapsed: float | None) -> str:
    if phase.status == "running" and run_elapsed is not None and phase.offset is not None:
        return f"{max(0.0, run_elapsed - phase.offset):.1f}s"
    if phase.duration is not None:
        return f"{phase.duration:.1f}s"
    return ""


def _fit(text: str, width: int) -> tuple[Text, bool]:
    """``text`` on one line of at most ``width`` cells; True when it had to be cut."""
    one_line = " ".join(text.split())
    rendered = Text(one_line, no_wrap=True, overflow="ellipsis")
    if rendered.cell_len <= width:
        return rendered, False
    rendered.truncate(width, overflow="ellipsis")
    return rendered, True


def run_view(record: RunRecord, *, width: int, run_elapsed: float | None = None) -> Group:
    """The live view of one run at ``width`` columns: a row per step, the reasons that do
    not fit below the table, and a footer with the budget.

    A pure function of the record, so tests and the screenshot script render exactly
    what a terminal shows.
    """
    rows = record.phase_records()
    title_w = max(len("Phase"), *(len(p.title) for p in rows))
    cells = [(p, _elapsed(p, run_elapsed)) for p in rows]
    elapsed_w = max(len("Elapsed"), *(len(e) for _, e in cells))
    allowed = [f"{p.allowed:.0f}s" if p.allowed is not None else "" for p in rows]
    allowed_w = max(len("Allowed"), *(len(a) for a in allowed))
    room = width - (1 + title_w + elapsed_w + allowed_w + 4 * _GAP)
    # In a very narrow terminal the Allowed column goes first: it is also in the log.
    show_allowed = room >= NOTE_MIN_WIDTH
    if not show_allowed:
        room += allowed_w + _GAP
    note_w = max(NOTE_MIN_WIDTH // 2, room)
    table = Table(box=None, show_header=True, header_style="bold", pad_edge=False)
    table.add_column("", width=1, no_wrap=True)
    table.add_column("Phase", no_wrap=True, min_width=title_w)
    table.add_column("Elapsed", justify="right", no_wrap=True, min_width=elapsed_w)
    if show_allowed:
        table.add_column("Allowed", justify="right", no_wrap=True, min_width=allowed_w)
    table.add_column("Note", no_wrap=True, overflow="ellipsis", max_width=note_w)
    below: list[Text] = []
    for (phase, elapsed), allow in zip(cells, allowed, strict=True):
        icon, style = ICONS[phase.status]
        note, cut = _fit(phase_note(phase), note_w)
        if cut:
            # What a step waits for, or why it failed, matters whole: it goes below the
            # table, where it wraps, and the column points at it.
            note, _ = _fit("(see below)", note_w)
            status = "" if phase.status == "running" else f" {phase.status}"
            line = Text(f"{phase.title}{status}: ", style=style)
            line.append(" ".join(phase_note(phase).split()))
            below.append(line)
        cells_of_row: list[RenderableType] = [Text(icon, style=style), phase.title, elapsed]
        table.add_row(*cells_of_row, *([allow] if show_allowed else []), note)
    parts: list[RenderableType] = [Text(record.suite, style="bold"), table, *below]
    if run_elapsed is not None:
        left = max(0.0, record.budget_total - run_elapsed)
        parts.append(
            Text(
                f"{run_elapsed:.1f} s elapsed · budget {left:.0f}/{record.budget_total:g} s left",
                style="dim",
            )
        )
    return Group(*parts)


def runs_view(
    records: Sequence[RunRecord],
    *,
    width: int,
    height: int | None = None,
    run_elapsed: float | None = None,
    budget: float | None = None,
) -> Group:
    """The live view of many runs: a row per flow (the step it is at, its time, its note)
    and a footer with the counts and the budget.

    With more flows than lines, failed and running flows are shown first and the rest
    are counted in the footer, so what needs attention stays on screen.
    """
    entries = []
    for record in records:
        current = _current_step(record)
        status: str
        if record.outcome is not None:
            status = record.outcome
        elif current is not None:
            status = current.status if current.status != "pending" else "running"
        else:
            status = "pending"
        took = (
            f"{record.time_spent:.1f}s"
            if record.time_spent is not None
            else (f"{run_elapsed:.1f}s" if run_elapsed is not None else "")
        )
        if record.outcome is not None:
            failed = next((p for p in record.phase_records() if p.status == "failed"), None)
            step = failed.title if failed is not None else "done"
            note = phase_note(failed) if failed is not None else ""
        else:
            step = current.title if current is not None else "starting"
            note = _short_note(current) if current is not None else ""
        entries.append((record.suite, status, step, took, note))
    # Flows of one run share a long name prefix (kaito-NAME-RUNID-): say it once above.
    names = [e[0] for e in entries]
    common = os.path.commonprefix(names) if len(names) > 1 else ""
    heading: list[RenderableType] = []
    if len(common) >= 10 and all(len(n) > len(common) for n in names):
        heading.append(Text(f"{common}…", style="bold", no_wrap=True, overflow="ellipsis"))
        entries = [(e[0][len(common) :], *e[1:]) for e in entries]
    shown = entries
    hidden = 0
    if height is not None and len(entries) > max(1, height - 4):
        rank = {"failed": 0, "interrupted": 0, "running": 1, "pending": 2, "passed": 3}
        limit = max(1, height - 4)
        shown = sorted(entries, key=lambda e: rank.get(e[1], 2))[:limit]
        hidden = len(entries) - len(shown)
    flow_w = max(len("Flow"), *(len(e[0]) for e in entries)) if entries else 4
    step_w = max(len("Step"), *(len(e[2]) for e in entries)) if entries else 4
    time_w = max(len("Elapsed"), *(len(e[3]) for e in entries)) if entries else 7
    note_w = max(NOTE_MIN_WIDTH // 2, width - (1 + flow_w + step_w + time_w + 4 * _GAP))
    table = Table(box=None, show_header=True, header_style="bold", pad_edge=False)
    table.add_column("", width=1, no_wrap=True)
    table.add_column("Flow", no_wrap=True, min_width=flow_w)
    table.add_column("Step", no_wrap=True, min_width=step_w)
    table.add_column("Elapsed", justify="right", no_wrap=True, min_width=time_w)
    table.add_column("Note", no_wrap=True, overflow="ellipsis", max_width=note_w)
    for suite, status, step, took, note in shown:
        icon, style = ICONS.get(status, ("·", "dim"))
        table.add_row(Text(icon, style=style), suite, step, took, _fit(note, note_w)[0])
    counts = {
        key: sum(1 for e in entries if e[1] == key)
        for key in ("passed", "failed", "interrupted", "running")
    }
    footer = f"{len(entries)} flows: " + ", ".join(f"{n} {k}" for k, n in counts.items() if n)
    if hidden:
        footer += f" ({hidden} not shown)"
    if run_elapsed is not None:
        footer += f" · {run_elapsed:.1f} s"
        if budget is not None:
            footer += f" · budget {max(0.0, budget - run_elapsed):.0f}/{budget:g} s left"
    return Group(*heading, table, Text(footer, style="dim", no_wrap=True, overflow="ellipsis"))


def _short_note(phase: PhaseRecord) -> str:
    """A running step's note in a row of many: a request that keeps failing, else what it
    last saw, which changes, so it comes first; what it waits for is the same for every
    flow of a run."""
    if phase.status == "running" and (phase.failing or phase.last_seen):
        return phase.failing or phase.last_seen or ""
    return phase_note(phase)


def _current_step(record: RunRecord) -> PhaseRecord | None:
    """The step a run is at: the running one, else the last one that started."""
    steps = record.phase_records()
    running = next((p for p in steps if p.status == "running"), None)
    if running is not None:
        return running
    started = [p for p in steps if p.status not in ("pending", "skipped")]
    return started[-1] if started else (steps[0] if steps else None)


# -- the end of a run ------------------------------------------------------------------


def summary_table(record: RunRecord) -> Table:
    """Phase, outcome, duration and reason for every step of the run (for a terminal:
    the phase, outcome and duration never wrap, the reason folds)."""
    table = Table(title=f"{record.suite}: summary", title_justify="left")
    table.add_column("Phase", no_wrap=True)
    table.add_column("Outcome", no_wrap=True)
    table.add_column("Duration", justify="right", no_wrap=True)
    table.add_column("Reason", overflow="fold")
    for phase in record.phase_records():
        _, style = ICONS[phase.status]
        duration = f"{phase.duration:.1f}s" if phase.duration is not None else "-"
        table.add_row(
            phase.title, Text(phase.status, style=style), duration, Text(phase.reason or "")
        )
    return table


def findings_lines(record: RunRecord) -> list[str]:
    """What the run found the system under test getting wrong, one line each."""
    found = record.findings()
    if not found:
        return []
    return [f"{record.suite}: {len(found)} finding(s)"] + [
        f"  {phase.title}: {finding.line()}" for phase, finding in found
    ]


def summary_lines(record: RunRecord) -> list[str]:
    """The summary as plain, unwrapped lines (for CI logs): aligned columns, the whole
    reason at the end of its line."""
    rows = [
        (
            p.title,
            p.status,
            f"{p.duration:.1f}s" if p.duration is not None else "-",
            " ".join((p.reason or "").split()),
        )
        for p in record.phase_records()
    ]
    return [f"{record.suite}: summary", *_aligned(rows)]


def runs_table(records: Sequence[RunRecord]) -> Table:
    """One row per run, for runs that shared a console: the outcome, the time, and
    where and why a failed run stopped."""
    table = Table(title=f"{len(records)} runs: summary", title_justify="left")
    table.add_column("Run", no_wrap=True)
    table.add_column("Outcome", no_wrap=True)
    table.add_column("Duration", justify="right", no_wrap=True)
    table.add_column("Failed at / reason", overflow="fold")
    for suite, outcome, spent, why in _runs_rows(records):
        style = VERDICT_STYLES.get(outcome, "bold").replace("bold ", "")
        table.add_row(suite, Text(outcome, style=style), spent, Text(why))
    return table


def runs_lines(records: Sequence[RunRecord]) -> list[str]:
    """:func:`runs_table` as plain, unwrapped lines."""
    return [f"{len(records)} runs: summary", *_aligned(_runs_rows(records))]


def print_runs(console: Console, records: Sequence[RunRecord]) -> None:
    """The summary of runs that shared a console: a table in a terminal, lines elsewhere."""
    if console.is_terminal:
        console.print(runs_table(records))
        return
    _write_lines(console, runs_lines(records))


def _runs_rows(records: Sequence[RunRecord]) -> list[tuple[str, str, str, str]]:
    rows: list[tuple[str, str, str, str]] = []
    for record in records:
        outcome: str = record.outcome or "failed"
        failed = next((p for p in record.phases if p.status == "failed"), None)
        if failed is not None:
            why = f"{failed.title}: {failed.reason}"
        elif record.cleanup.status == "failed":
            why = f"Cleanup: {record.cleanup.reason}"
        else:
            why = ""
        spent = f"{record.time_spent:.1f}s" if record.time_spent is not None else "-"
        rows.append((record.suite, outcome, spent, " ".join(why.split())))
    return rows


def _aligned(rows: Sequence[tuple[str, str, str, str]]) -> list[str]:
    if not rows:
        return []
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    w2 = max(len(r[2]) for r in rows)
    return [f"  {a:<{w0}}  {b:<{w1}}  {c:>{w2}}  {d}".rstrip() for a, b, c, d in rows]


def _write_lines(console: Console, lines: Sequence[str]) -> None:
    for line in lines:
        console.print(line, markup=False, highlight=False, soft_wrap=True)


# -- reporters -------------------------------------------------------------------------


class ConsoleReporter:
    """Progress and the final verdict of one run on a ``rich`` console."""

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
        #: Named in the verdict; leave it out when the report may not be written yet
        #: (the app names the reports itself once they are on disk).
        self.junit_path = Path(junit_path) if junit_path is not None else None
        self._refresh = refresh_per_second
        self._view: Live | None = None
        self._record: RunRecord | None = None
        self._run_started = time.monotonic()
        #: Plain lines to a file or pipe go straight to it: rich's rendering costs about
        #: half a millisecond a line, which fifty runs' logs turn into most of a second.
        self._plain_file: IO[str] | None = (
            None if self.live or self.console.is_terminal else self.console.file
        )

    # -- reporter protocol -----------------------------------------------------------

    def run_started(self, record: RunRecord) -> None:
        self._record = record
        self._run_started = time.monotonic()
        if self.live:
            # Transient: at the end the summary replaces the live table instead of
            # repeating it.
            self._view = Live(
                console=self.console,
                refresh_per_second=self._refresh,
                get_renderable=self._render_live,
                transient=True,
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
                # Runs sharing a console get one summary for all of them (print_runs).
                if self.console.is_terminal:
                    self.console.print(summary_table(record))
                else:
                    for line in summary_lines(record):
                        self._line(line)
            for line in findings_lines(record):
                self._line(line)
            cleanup = record.cleanup
            if cleanup.detail and cleanup.status in ("skipped", "failed", "interrupted"):
                # Kept or left-behind resources: say how to look at them and remove them.
                self._line(f"Cleanup {cleanup.status}; to inspect and clean up:")
                for line in cleanup.detail.splitlines():
                    self._line(f"  {line}")
            self._line(self._verdict(record))

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

    def _line(self, text: str | Text) -> None:
        if self.prefix and self._record is not None:
            text = Text(f"{self._record.suite}: ") + text
        plain = str(text)
        masked = redact(plain)
        if masked != plain:  # a secret in it: its styling goes with it
            text = Text(masked)
        if self._plain_file is not None:
            self._plain_file.write(masked + "\n")
            return
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def _render_live(self) -> RenderableType:
        record = self._record
        if record is None:
            return Text("")
        return run_view(
            record, width=self.console.width, run_elapsed=time.monotonic() - self._run_started
        )

    def _verdict(self, record: RunRecord) -> Text:
        return verdict(record, junit_path=self.junit_path)


def verdict(record: RunRecord, *, junit_path: Path | None = None) -> Text:
    """The one-line verdict of a run: outcome, time, exit code and why it failed."""
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
    if junit_path is not None:
        text.append(f"; JUnit report: {junit_path}")
    return text


class RunsView:
    """One live view for many runs sharing a terminal: a row per flow, a budget footer.

    Pass the same instance to every runner as a reporter; :meth:`close` stops the view
    (the app calls it once every run has finished) and prints, for each run that kept or
    left resources behind, how to inspect and delete them.
    """

    def __init__(
        self, console: Console, *, budget: float | None = None, refresh_per_second: float = 4
    ) -> None:
        self.console = console
        self.budget = budget
        self._records: dict[int, RunRecord] = {}
        self._started = time.monotonic()
        self._view: Live | None = None
        self._refresh = refresh_per_second

    def run_started(self, record: RunRecord) -> None:
        self._records.setdefault(id(record), record)
        if self._view is None:
            self._started = time.monotonic()
            self._view = Live(
                console=self.console,
                refresh_per_second=self._refresh,
                get_renderable=self._render,
                transient=True,
            )
            self._view.start()

    def phase_started(self, record: RunRecord, phase: PhaseRecord) -> None:
        self._records.setdefault(id(record), record)

    def phase_finished(self, record: RunRecord, phase: PhaseRecord) -> None:
        self._records.setdefault(id(record), record)

    def run_finished(self, record: RunRecord) -> None:
        self._records.setdefault(id(record), record)

    def close(self) -> None:
        view, self._view = self._view, None
        if view is not None and view.is_started:
            view.stop()
        for record in self._records.values():
            _write_lines(self.console, findings_lines(record))
            cleanup = record.cleanup
            if cleanup.detail and cleanup.status in ("skipped", "failed", "interrupted"):
                lines = [f"Cleanup {cleanup.status}; to inspect and clean up:"]
                lines += [f"  {line}" for line in cleanup.detail.splitlines()]
                _write_lines(self.console, [f"{record.suite}: {line}" for line in lines])

    def _render(self) -> RenderableType:
        return runs_view(
            list(self._records.values()),
            width=self.console.width,
            height=self.console.height,
            run_elapsed=time.monotonic() - self._started,
            budget=self.budget,
        )


def _stamp(offset: float | None) -> str:
    return f"[{offset or 0.0:5.1f}s]"
