"""GitHub Actions: a job summary and annotations for the run.

In Actions, the run's verdict should be readable without opening the log or the
JUnit artifact: the job summary (``$GITHUB_STEP_SUMMARY``, Markdown) gets the
verdict, a phase table, a Gantt chart of where the time went, and the properties;
the failing phase becomes an ``::error`` annotation, which GitHub shows on the
run's page and in pull requests.

Both formats have their own escaping, and getting it wrong silently mangles the
report (a ``|`` in a reason splits a table cell; a newline ends a workflow
command), so every value goes through the escaping functions below.
"""

from __future__ import annotations

import html
import os
import re
import sys
from pathlib import Path
from typing import TextIO

from ._record import PhaseRecord, RunRecord
from ._redact import redact

#: GitHub truncates a step summary beyond 1 MiB; cells and properties stay well below.
CELL_MAX_CHARS = 500
ANNOTATION_MAX_CHARS = 4000
PROPERTY_MAX_CHARS = 1000

VERDICT_ICONS = {"passed": "✅", "failed": "❌", "interrupted": "⚠️"}
STATUS_ICONS = {
    "passed": "✅ passed",
    "failed": "❌ failed",
    "interrupted": "⚠️ interrupted",
    "skipped": "⏭️ skipped",
    "running": "… running",
    "pending": "· pending",
}

#: Mermaid's Gantt parses dates in the viewer's local time and draws the axis in local
#: time too, so a time of day (not an epoch offset) reads the same in every time zone:
#: the run starts at 00:00:00.000 "today".
GANTT_DATE_FORMAT = "HH:mm:ss.SSS"
GANTT_AXIS_FORMAT = "%M:%S"
#: A task line: ``<title> :<tags>, <id>, <start>, <end>`` (start and end as GANTT_DATE_FORMAT).
GANTT_TASK = re.compile(
    r"^    [^:#;%\n]+ :(?:(?:crit|done|active), )*t\d+, "
    r"\d\d:\d\d:\d\d\.\d{3}, \d\d:\d\d:\d\d\.\d{3}$"
)

_CONTROL = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
#: What a Gantt title may contain: ``:`` splits a task line, ``#`` and ``;`` end it,
#: ``%%`` starts a comment; anything outside this set is replaced by a space.
_GANTT_UNSAFE = re.compile(r"[^\w .,()/'+\-]")


class GitHubReporter:
    """Writes the job summary and prints workflow-command annotations when the run ends.

    ``summary_path`` defaults to ``$GITHUB_STEP_SUMMARY``; without one, only the
    annotations are printed. Add this reporter when ``GITHUB_ACTIONS`` is ``true``:
    elsewhere the annotations would just be noise on stdout.
    """

    def __init__(
        self, summary_path: str | os.PathLike[str] | None = None, stream: TextIO | None = None
    ) -> None:
        if summary_path is None:
            summary_path = os.environ.get("GITHUB_STEP_SUMMARY") or None
        self.summary_path = Path(summary_path) if summary_path is not None else None
        self._stream = stream

    # -- reporter protocol -----------------------------------------------------------

    def run_started(self, record: RunRecord) -> None:
        return None

    def phase_started(self, record: RunRecord, phase: PhaseRecord) -> None:
        return None

    def phase_finished(self, record: RunRecord, phase: PhaseRecord) -> None:
        return None

    def run_finished(self, record: RunRecord) -> None:
        stream = self._stream if self._stream is not None else sys.stdout
        for line in workflow_commands(record):
            print(redact(line), file=stream)
        if self.summary_path is not None:
            try:
                with self.summary_path.open("a", encoding="utf-8") as summary:
                    summary.write(redact(job_summary(record)))
            except OSError as exc:
                print(command("warning", f"cannot write the job summary: {exc}"), file=stream)
        stream.flush()


# -- the job summary ---------------------------------------------------------------------


def job_summary(record: RunRecord) -> str:
    """The Markdown job summary: verdict, phase table, Gantt chart, properties."""
    parts = [
        _heading(record),
        phase_table(record),
        _findings(record),
        gantt(record),
        _properties(record),
    ]
    return "\n".join(part for part in parts if part) + "\n"


def _heading(record: RunRecord) -> str:
    outcome = record.outcome or "interrupted"
    icon = VERDICT_ICONS.get(outcome, "")
    spent = f" in {record.time_spent:.1f} s" if record.time_spent is not None else ""
    title = f"## {icon} {_inline(record.suite)}: {outcome}{spent}"
    failed = _first_failure(record)
    lines = [title, ""]
    if outcome == "interrupted":
        lines.append(f"Interrupted by {_inline(record.interrupted_by or 'a signal')}.")
    elif failed is not None:
        lines.append(
            f"**{_inline(failed.title)}** failed: {_inline(failed.reason or 'no reason given')}"
        )
    lines.append(
        f"Budget {record.budget_total:g} s ({record.budget_reserve:g} s reserved for "
        f"diagnose and cleanup), exit code {record.exit_code}."
    )
    return "\n".join(lines) + "\n"


def _findings(record: RunRecord) -> str:
    """What the system under test got wrong while the run went on (``--strict``: failed)."""
    found = record.findings()
    if not found:
        return ""
    rows = ["**Findings**", "", "| Phase | Finding | What | Fact |", "|---|---|---|---|"]
    for phase, f in found:
        rows.append(
            f"| {cell(phase.title)} | {cell(f.name)} | {cell(f.message)} | {cell(f.fact)} |"
        )
    return "\n".join(rows) + "\n"


def phase_table(record: RunRecord) -> str:
    rows = ["| # | Phase | Outcome | Duration | Reason |", "|---:|---|---|---:|---|"]
    for index, phase in enumerate(record.phase_records(), start=1):
        duration = f"{phase.duration:.1f} s" if phase.duration is not None else "–"
        rows.append(
            f"| {index} | {cell(phase.title)} | {STATUS_ICONS.get(phase.status, phase.status)} "
            f"| {duration} | {cell(phase.reason or '')} |"
        )
    return "\n".join(rows) + "\n"


def gantt(record: RunRecord) -> str:
    """A Mermaid Gantt chart of the phases that ran; failed ones are ``crit``.

    Empty when nothing ran (a run stopped before its first phase has no timeline).
    """
    tasks: list[str] = []
    section = ""
    for index, phase in enumerate(record.phase_records()):
        if phase.offset is None or phase.duration is None:
            continue
        wanted = "Run" if phase.kind == "phase" else "Cleanup"
        if wanted != section:
            section = wanted
            tasks.append(f"    section {section}")
        start = max(0, round(phase.offset * 1000))
        end = start + max(1, round(phase.duration * 1000))
        tags = (
            "crit, "
            if phase.status in ("failed", "interrupted")
            else ("done, " if phase.status == "passed" else "")
        )
        tasks.append(
            f"    {gantt_title(phase.title, f'Phase {index + 1}')} :{tags}t{index}, "
            f"{_clock(start)}, {_clock(end)}"
        )
    if not tasks:
        return ""
    lines = [
        "```mermaid",
        "gantt",
        f"    title {gantt_title(record.suite, 'Run')} timeline",
        f"    dateFormat {GANTT_DATE_FORMAT}",
        f"    axisFormat {GANTT_AXIS_FORMAT}",
        "    todayMarker off",
        *tasks,
        "```",
    ]
    return "\n".join(lines) + "\n"


def _properties(record: RunRecord) -> str:
    rows = ["<details><summary>Properties</summary>", "", "| Property | Value |", "|---|---|"]
    for key, value in record.all_properties().items():
        rows.append(f"| {cell(key)} | {cell(value[:PROPERTY_MAX_CHARS])} |")
    rows += ["", "</details>"]
    return "\n".join(rows) + "\n"


def _first_failure(record: RunRecord) -> PhaseRecord | None:
    for phase in record.phase_records():
        if phase.status == "failed":
            return phase
    return None


def cell(text: str) -> str:
    """``text`` as one Markdown table cell: no raw ``|`` or newline, HTML escaped."""
    text = _CONTROL.sub("", text)
    if len(text) > CELL_MAX_CHARS:
        text = text[: CELL_MAX_CHARS - 1] + "…"
    escaped = html.escape(text, quote=False).replace("|", "\\|")
    return "<br>".join(
        line.strip() for line in escaped.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    )


def _inline(text: str) -> str:
    """``text`` on one Markdown line, HTML escaped."""
    return html.escape(" ".join(_CONTROL.sub("", text).split()), quote=False)


def gantt_title(text: str, fallback: str) -> str:
    """A task or chart title Mermaid's Gantt grammar accepts as plain text."""
    safe = " ".join(_GANTT_UNSAFE.sub(" ", text).split())
    return safe or fallback


def _clock(milliseconds: int) -> str:
    seconds, ms = divmod(milliseconds, 1000)
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}.{ms:03d}"


# -- workflow commands -------------------------------------------------------------------


def workflow_commands(record: RunRecord) -> list[str]:
    """An ``::error`` for each failed phase (cleanup included), a ``::warning`` for each
    finding of a phase that passed, and one if interrupted."""
    lines: list[str] = []
    for phase in record.phase_records():
        if phase.status != "failed":
            continue
        message = phase.reason or "failed"
        if phase.detail:
            message += "\n" + phase.detail
        lines.append(command("error", message, title=f"{record.suite}: {phase.title} failed"))
    for phase, f in record.findings():
        if phase.status != "failed":  # under --strict the phase's error says it already
            lines.append(command("warning", f.line(), title=f"{record.suite}: finding {f.name}"))
    if record.outcome == "interrupted":
        lines.append(
            command(
                "warning",
                f"the run was interrupted by {record.interrupted_by or 'a signal'}",
                title=f"{record.suite}: interrupted",
            )
        )
    return lines


def command(name: str, message: str, **properties: str) -> str:
    """One workflow command line: ``::name key=value,...::message``, escaped."""
    if len(message) > ANNOTATION_MAX_CHARS:
        message = message[: ANNOTATION_MAX_CHARS - 1] + "…"
    props = ",".join(f"{key}={escape_property(value)}" for key, value in properties.items())
    return f"::{name}{' ' + props if props else ''}::{escape_data(message)}"


def escape_data(text: str) -> str:
    """A command's message: ``%``, CR and LF would end or corrupt the command."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """A command's property value: also ``:`` and ``,``, which separate properties."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")
