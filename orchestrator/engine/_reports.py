"""The report files as part of the verdict.

CI decides from junit.xml and a person from run.json, so a stale file from an earlier
run is worse than none: it states a verdict about something that did not happen. A
run therefore removes the previous run's reports before it starts, writes new ones on
every exit path, and when a report cannot be written, says so and fails
(:data:`EXIT_REPORTS`) instead of naming a file that is not there.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ._atomic import atomic_write_text
from ._junit import error_record, stopped_record, write_junit
from ._record import RunRecord
from ._redact import redactor

JUNIT_XML = "junit.xml"
RUN_JSON = "run.json"
#: Every file that states a verdict, in the artifacts dir.
REPORT_FILES = (JUNIT_XML, RUN_JSON)
#: The exit code of a run whose reports could not be written (a run interrupted by a
#: signal, or stopped by bad input, keeps its own code: 130/143, 2).
EXIT_REPORTS = 3


@dataclass(frozen=True)
class ReportProblem:
    """A report file that could not be written, and why."""

    path: Path
    error: str

    def __str__(self) -> str:
        return f"{self.path}: {self.error}"


def describe_os_error(exc: OSError) -> str:
    """ "Permission denied", "No space left on device": what a person can act on."""
    return exc.strerror or str(exc) or type(exc).__name__


def clear_reports(artifacts_dir: str | os.PathLike[str]) -> list[ReportProblem]:
    """Remove the previous run's report files; the ones that cannot be removed are returned."""
    problems = []
    for name in REPORT_FILES:
        path = Path(artifacts_dir) / name
        try:
            path.unlink(missing_ok=True)
        except IsADirectoryError:
            problems.append(ReportProblem(path, "is a directory"))
        except OSError as exc:
            problems.append(ReportProblem(path, describe_os_error(exc)))
    for child in _earlier_runs(Path(artifacts_dir)):
        try:
            shutil.rmtree(child)
        except OSError as exc:
            problems.append(ReportProblem(child, describe_os_error(exc)))
    return problems


def _earlier_runs(artifacts_dir: Path) -> list[Path]:
    """Folders an earlier run left (a flow's of ``--parallel``, the environment's): each
    holds a run.json of ours, a verdict about a run that is over."""
    try:
        children = [c for c in artifacts_dir.iterdir() if c.is_dir() and not c.is_symlink()]
    except OSError:
        return []
    found = []
    for child in children:
        try:
            data = json.loads((child / RUN_JSON).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and {"suite", "phases", "outcome"} <= data.keys():
            found.append(child)
    return found


def discard(path: Path) -> None:
    """Remove a report that could not be rewritten, so no stale verdict survives."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def write_run_json(record: RunRecord, path: str | os.PathLike[str]) -> Path:
    """``record`` as run.json, atomically, each string in it masked (valid JSON whatever
    a secret looks like)."""
    data = redactor.redact_value(record.to_dict())
    return atomic_write_text(path, json.dumps(data, indent=2) + "\n", masked=True)


def write_error_reports(
    artifacts_dir: str | os.PathLike[str],
    suite: str,
    message: str,
    *,
    title: str = "Configuration",
) -> list[ReportProblem]:
    """junit.xml and run.json for a run that never started; the files that could not be
    written are removed and returned."""
    return write_reports(error_record(suite, message, title=title), artifacts_dir)


def write_stopped_reports(
    artifacts_dir: str | os.PathLike[str], suite: str, signame: str, message: str
) -> list[ReportProblem]:
    """junit.xml and run.json for a run a signal stopped before its flows started."""
    return write_reports(stopped_record(suite, signame, message), artifacts_dir)


def write_reports(record: RunRecord, artifacts_dir: str | os.PathLike[str]) -> list[ReportProblem]:
    """``record`` as junit.xml and run.json; the files that could not be written are
    removed and returned."""
    target = Path(artifacts_dir)
    problems = []
    for name in REPORT_FILES:
        path = target / name
        try:
            target.mkdir(parents=True, exist_ok=True)
            if name == JUNIT_XML:
                write_junit([record], path)
            else:
                write_run_json(record, path)
        except OSError as exc:
            problems.append(ReportProblem(path, describe_os_error(exc)))
            discard(path)
    return problems
