"""JUnit XML in the widely used Jenkins "junit-10" shape.

CI systems only show what parses, so the file must be valid XML 1.0 even when a log
carries terminal escapes or NULs, must stay a readable size, and must exist whatever
happened: the reporter rewrites it after every phase and the runner guarantees a final
write, so a killed run still leaves its last known state behind.
"""

from __future__ import annotations

import os
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from datetime import UTC
from functools import partial
from pathlib import Path
from typing import NamedTuple

from ._atomic import atomic_write_text
from ._record import PhaseKind, PhaseRecord, PhaseStatus, RunRecord, utcnow
from ._redact import redact, redactor

MESSAGE_MAX_CHARS = 1024
BODY_MAX_CHARS = 64 * 1024
SYSTEM_OUT_MAX_CHARS = 256 * 1024
PROPERTY_MAX_CHARS = 4096

# Everything XML 1.0 forbids: C0 controls except tab/LF/CR, surrogates, U+FFFE/U+FFFF.
_FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
# ANSI escape sequences would survive as visible garbage once the ESC is stripped.
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def strip_forbidden(text: str) -> str:
    """``text`` without ANSI escapes and the characters XML 1.0 forbids."""
    return _FORBIDDEN.sub("", _ANSI.sub("", text))


def clean_xml_text(text: str, limit: int) -> str:
    """``text`` masked and made XML-safe, keeping at most ``limit`` chars (the tail, which
    is where a log explains a failure). Masked first, so that a cut can never leave half a
    secret behind; every string of the file passes here or :func:`_message`, so the file
    is written without a pass over its whole text, which would mask a count or a time
    that equals a short secret."""
    text = strip_forbidden(redact(text))
    if len(text) > limit:
        marker = f"[{len(text) - limit} characters truncated]\n"
        text = marker + text[len(text) - limit + len(marker) :]
    return text


def _message(text: str) -> str:
    """Attribute values are one line: CI tools show them as a title."""
    one_line = " ".join(strip_forbidden(redact(text[: MESSAGE_MAX_CHARS * 8])).split())
    if len(one_line) > MESSAGE_MAX_CHARS:
        one_line = one_line[: MESSAGE_MAX_CHARS - 3] + "..."
    return one_line


#: A part of a ``<testsuite>`` (its properties, a testcase) as lines of the document,
#: and the verdict it counts as (a testcase's; "" for the properties).
_Part = tuple[str, str]


class _Cleaner:
    """Cleans each string of a document (:func:`clean_xml_text`, :func:`_message`) and
    builds each part of a suite, at every call: for a document written once."""

    def begin(self) -> None:
        """Called before a suite is built."""

    def text(self, text: str, limit: int) -> str:
        return clean_xml_text(text, limit)

    def message(self, text: str) -> str:
        return _message(text)

    def parts(self, record: RunRecord) -> dict[tuple[object, ...], _Part]:
        """The parts of ``record``'s last suite, by what they were built from."""
        return {}

    def keep(self, record: RunRecord, parts: dict[tuple[object, ...], _Part]) -> None:
        """The parts of ``record``'s suite just built: the next build reuses them."""


class _CachedCleaner(_Cleaner):
    """The same results, each string cleaned and each part of a suite built once while
    the process's secrets stay the same: a reporter rewrites its file at every phase
    event, and most of it (properties, names, the testcases of finished phases) is what
    the last write held.

    Registering a secret (a new :attr:`~._redact.Redactor.generation` of
    :data:`redactor`, also after its ``clear()``) empties both caches, so a string
    written before is masked with it at the next write. Long strings are cleaned at
    every call: the log changes at every write anyway, and a cache of them would hold a
    copy of every version of it. A run keeps the parts of its last suite only: one
    version of each.
    """

    MAX_CHARS = 4096
    #: The cache is emptied when the strings it holds reach this many characters.
    MAX_TOTAL_CHARS = 1 << 20

    def __init__(self) -> None:
        self._done: dict[tuple[str, int], str] = {}
        self._chars = 0
        self._parts: dict[int, dict[tuple[object, ...], _Part]] = {}
        self._generation = -1

    def begin(self) -> None:
        generation = redactor.generation
        if generation != self._generation or self._chars >= self.MAX_TOTAL_CHARS:
            self._done.clear()
            self._chars = 0
        if generation != self._generation:
            self._parts.clear()
            self._generation = generation

    def text(self, text: str, limit: int) -> str:
        return self._once(text, limit, clean_xml_text)

    def message(self, text: str) -> str:
        # No text limit is negative: the key cannot collide with a body's.
        return self._once(text, -1, lambda text, _: _message(text))

    def _once(self, text: str, limit: int, clean: Callable[[str, int], str]) -> str:
        if len(text) > self.MAX_CHARS:
            return clean(text, limit)
        key = (text, limit)
        done = self._done.get(key)
        if done is None:
            done = self._done[key] = clean(text, limit)
            self._chars += len(text) + len(done)
        return done

    def parts(self, record: RunRecord) -> dict[tuple[object, ...], _Part]:
        return self._parts.get(id(record), {})

    def keep(self, record: RunRecord, parts: dict[tuple[object, ...], _Part]) -> None:
        self._parts[id(record)] = parts


_CLEAN_ONCE = _Cleaner()


def _seconds(value: float | None) -> str:
    return f"{max(0.0, value or 0.0):.3f}"


class _Case(NamedTuple):
    """Everything a testcase is built from, taken from its run and phase records.

    :func:`_testcase` is given this and nothing else, and the whole of it is the key
    under which the built testcase is kept (:class:`_CachedCleaner`): a field that the
    testcase starts to show has to be added here, and is then part of the key too. So a
    testcase is reused only when everything it shows is as it was.
    """

    suite: str
    #: Its place in the run, from 1.
    number: int
    title: str
    kind: PhaseKind
    status: PhaseStatus
    reason: str | None
    detail: str | None
    duration: float | None
    timed_out: bool
    allowed: float | None
    #: Each finding as its one line.
    findings: tuple[str, ...]

    @classmethod
    def of(cls, record: RunRecord, index: int, phase: PhaseRecord) -> _Case:
        return cls(
            record.suite,
            index,
            phase.title,
            phase.kind,
            phase.status,
            phase.reason,
            phase.detail,
            phase.duration,
            phase.timed_out,
            phase.allowed,
            tuple(f.line() for f in phase.findings),
        )


def _testcase_name(case: _Case) -> str:
    return f"{case.number:02d} {case.title}"


def _failure_message(case: _Case) -> str:
    reason = case.reason or case.status
    # Timeout reasons already start with the title; do not say it twice.
    named = reason if reason.startswith(case.title) else f"{case.title}: {reason}"
    return named if case.allowed is None else f"{named} (deadline {case.allowed:.1f} s)"


def _testcase(case: _Case, clean: _Cleaner) -> _Part:
    """One testcase and its JUnit verdict, built from ``case`` alone."""
    element = ET.Element(
        "testcase",
        {
            "classname": f"orchestrator.{clean.text(case.suite, 200)}",
            "name": clean.text(_testcase_name(case), 300),
            "time": _seconds(case.duration),
        },
    )
    verdict = _verdict(element, case, clean)
    if case.findings:
        # The testcase's own output: what this phase found the system under test getting
        # wrong (the finding.NAME properties carry the same, at the suite level).
        out = ET.SubElement(element, "system-out")
        out.text = clean.text(
            "\n".join(f"FINDING {line}" for line in case.findings), BODY_MAX_CHARS
        )
    return _lines(element), verdict


def _lines(element: ET.Element) -> str:
    """A child of ``<testsuite>``, indented as :func:`ET.indent` would in the document."""
    ET.indent(element, level=2)
    return "    " + ET.tostring(element, encoding="unicode") + "\n"


def _verdict(element: ET.Element, case: _Case, clean: _Cleaner) -> str:
    body = "\n".join(filter(None, [case.reason, case.detail]))
    if case.status in ("pending", "skipped"):
        message = clean.message(case.reason or "not reached")
        skipped = ET.SubElement(element, "skipped", {"message": message})
        if case.detail:
            skipped.text = clean.text(case.detail, BODY_MAX_CHARS)
        return "skipped"
    if case.status == "failed" and case.kind != "diagnose":
        failure = ET.SubElement(
            element,
            "failure",
            {
                "message": clean.message(_failure_message(case)),
                "type": "timeout" if case.timed_out else "failure",
            },
        )
        failure.text = clean.text(body, BODY_MAX_CHARS)
        return "failure"
    if case.status in ("failed", "interrupted", "running"):
        # Interrupted steps and a broken diagnose are errors, not test failures: the
        # system under test did not fail them. "running" only appears in the interim
        # files written while the run is still going.
        reason = case.reason or ("still running" if case.status == "running" else case.status)
        error = ET.SubElement(
            element,
            "error",
            {"message": clean.message(f"{case.title}: {reason}"), "type": case.status},
        )
        error.text = clean.text(body, BODY_MAX_CHARS)
        return "error"
    return "passed"


def _properties(properties: dict[str, str], clean: _Cleaner) -> _Part:
    element = ET.Element("properties")
    for key, value in properties.items():
        ET.SubElement(
            element,
            "property",
            {"name": clean.text(key, 200), "value": clean.text(value, PROPERTY_MAX_CHARS)},
        )
    return _lines(element), ""


def _suite_xml(record: RunRecord, clean: _Cleaner = _CLEAN_ONCE) -> tuple[str, dict[str, int]]:
    """One ``<testsuite>`` element, indented for its place in the document, and its counts.

    Built part by part (the properties, each testcase) rather than as one tree: a part
    built from the same values as at the last write is reused (see :class:`_CachedCleaner`).
    """
    clean.begin()
    last, parts = clean.parts(record), {}

    def part(key: tuple[object, ...], build: Callable[[], _Part]) -> _Part:
        built = last.get(key)
        parts[key] = built = build() if built is None else built
        return built

    properties = record.all_properties()
    lines = [part(("properties", *properties.items()), lambda: _properties(properties, clean))[0]]
    counts = {"tests": 0, "failure": 0, "error": 0, "skipped": 0, "passed": 0}
    for index, phase in enumerate(record.phase_records(), start=1):
        case = _Case.of(record, index, phase)
        xml, verdict = part(("testcase", *case), partial(_testcase, case, clean))
        lines.append(xml)
        counts[verdict] += 1
        counts["tests"] += 1
    clean.keep(record, parts)
    out = ET.Element("system-out")
    out.text = clean.text(record.log_text(), SYSTEM_OUT_MAX_CHARS)
    lines.append(_lines(out))
    started = record.started_at or utcnow()
    suite = ET.Element(
        "testsuite",
        {
            "name": clean.text(record.suite, 200),
            "tests": str(counts["tests"]),
            "failures": str(counts["failure"]),
            "errors": str(counts["error"]),
            "skipped": str(counts["skipped"]),
            "time": _seconds(record.time_spent),
            # junit-10 wants a timestamp without a zone: it is UTC.
            "timestamp": started.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
        },
    )
    head = "  " + ET.tostring(suite, encoding="unicode").removesuffix(" />") + ">\n"
    return head + "".join(lines) + "  </testsuite>\n", counts


def wall_time(records: Sequence[RunRecord]) -> float:
    """Seconds from the first run's start to the last run's end: what the job took.

    Runs of one invocation overlap (``--parallel``), so the sum of their times says
    nothing about how long anyone waited. Runs still going count up to now; records
    without timestamps (built by hand) fall back to their own time.
    """
    spans = [(r.started_at, r.ended_at or utcnow()) for r in records if r.started_at is not None]
    if not spans:
        return max((r.time_spent or 0.0 for r in records), default=0.0)
    return max(
        0.0, (max(end for _, end in spans) - min(start for start, _ in spans)).total_seconds()
    )


def _document(records: Sequence[RunRecord], suites: Sequence[tuple[str, dict[str, int]]]) -> str:
    totals = {
        key: sum(counts[key] for _, counts in suites)
        for key in ("tests", "failure", "error", "skipped")
    }
    root = ET.Element(
        "testsuites",
        {
            "name": "orchestrator",
            "tests": str(totals["tests"]),
            "failures": str(totals["failure"]),
            "errors": str(totals["error"]),
            "skipped": str(totals["skipped"]),
            "time": _seconds(wall_time(records)),
        },
    )
    if not suites:
        return (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            + ET.tostring(root, encoding="unicode")
            + "\n"
        )
    head = ET.tostring(root, encoding="unicode").removesuffix(" />") + ">\n"
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        + head
        + "".join(xml for xml, _ in suites)
        + "</testsuites>\n"
    )


def junit_xml(records: Sequence[RunRecord]) -> str:
    """One ``<testsuites>`` document with a ``<testsuite>`` per record."""
    return _document(records, [_suite_xml(record) for record in records])


def write_junit(records: Sequence[RunRecord], path: str | os.PathLike[str]) -> Path:
    """Write ``records`` as one JUnit file, atomically."""
    return atomic_write_text(path, junit_xml(records), masked=True)


def error_record(
    suite: str,
    message: str,
    *,
    title: str = "Configuration",
    properties: dict[str, str] | None = None,
) -> RunRecord:
    """The record of a run that never started (bad configuration, unusable cluster)."""
    now = utcnow()
    step = PhaseRecord(
        name="configuration",
        title=title,
        status="failed",
        reason=message,
        started_at=now,
        ended_at=now,
        duration=0.0,
    )
    record = RunRecord(
        suite=suite,
        properties=dict(properties or {}),
        phases=[step],
        outcome="failed",
        usage_error=True,
        started_at=now,
        ended_at=now,
        time_spent=0.0,
    )
    record.cleanup.status = "skipped"
    record.cleanup.reason = "the run did not start"
    record.append_log(message)
    return record


def stopped_record(suite: str, signame: str, message: str, *, title: str = "Setup") -> RunRecord:
    """The record of a run that a signal stopped before its flows started (while the
    kubeconfig loaded, a credential plugin ran, the sandbox started)."""
    record = error_record(suite, message, title=title)
    record.usage_error = False
    record.phases[0].status = "interrupted"
    record.interrupted_by = signame
    record.outcome = "interrupted"
    record.cleanup.reason = "the flows did not start: nothing of theirs to delete"
    return record


def write_error_junit(
    path: str | os.PathLike[str],
    suite: str,
    message: str,
    *,
    title: str = "Configuration",
    properties: dict[str, str] | None = None,
) -> Path:
    """A JUnit file for a run that never started (bad configuration, unusable
    cluster): CI then shows why, instead of a missing report."""
    record = error_record(suite, message, title=title, properties=properties)
    return write_junit([record], path)


def _identity(stat: os.stat_result) -> tuple[int, int, int, int]:
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)


class JUnitReporter:
    """Keeps a JUnit file at ``path`` up to date with every run it reports on.

    It rewrites the file at every step (a few small atomic writes per run), so even a
    run killed with SIGKILL leaves a report that shows how far it got. One reporter
    shared by several runners running at once writes one file with a testsuite per
    run, in the order the runs started.
    """

    #: With many runs sharing the reporter, every step would rewrite the file: then a
    #: rewrite waits this long after the last one, and only the runs that reported
    #: since are serialized again (the others' XML is kept), so N runs cost N suites'
    #: work per write rather than N squared. A run's end always writes.
    MIN_INTERVAL = 0.5

    def __init__(
        self, path: str | os.PathLike[str], *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.path = Path(path)
        self._records: dict[int, RunRecord] = {}
        self._xml: dict[int, tuple[str, dict[str, int]]] = {}
        self._dirty: set[int] = set()
        self._clock = clock
        self._last: float | None = None
        self._clean = _CachedCleaner()
        #: The redactor's generation at the last write (see flush).
        self._generation = -1
        #: The last document written, whether it was synced, and the file it became
        #: (device, inode, size, mtime): a write that would put the same bytes in the
        #: same file again is skipped (a run's end writes it, then the app's last flush).
        self._written: tuple[str, bool, tuple[int, int, int, int]] | None = None
        #: Why the latest write failed (None once a write succeeds): the app turns it
        #: into a failed verdict, since CI cannot see a report that is not there.
        self.error: OSError | None = None

    def _write(self, record: RunRecord, *, force: bool = False, durable: bool = False) -> None:
        key = id(record)
        self._records.setdefault(key, record)
        self._dirty.add(key)
        now = self._clock()
        shared = len(self._records) > 1
        if shared and not force and self._last is not None and now - self._last < self.MIN_INTERVAL:
            return
        self._last = now
        self.flush(durable=durable)

    def flush(self, *, durable: bool = True) -> Path:
        """Write the file now, serializing again only the runs that changed since the last write.

        ``durable=False`` for progress written while runs go on: still atomic (a rename),
        not synced to the disk (see ``_atomic``); a run's end writes it durably."""
        generation = redactor.generation
        if generation != self._generation:
            # A secret registered (or one forgotten) since: the runs serialized before may
            # hold it.
            self._dirty.update(self._records)
            self._generation = generation
        for key in self._dirty:
            self._xml[key] = _suite_xml(self._records[key], self._clean)
        self._dirty.clear()
        records = list(self._records.values())
        document = _document(records, [self._xml[id(r)] for r in records])
        if self._unchanged(document, durable):
            return self.path
        self._written = None
        try:
            written = atomic_write_text(self.path, document, durable=durable, masked=True)
        except OSError as exc:
            self.error = exc
            raise
        self.error = None
        try:
            self._written = (document, durable, _identity(os.stat(written)))
        except OSError:
            pass  # gone already: the next write is made, whatever it holds
        return written

    def _unchanged(self, document: str, durable: bool) -> bool:
        """Whether the file holds ``document`` already, written by this reporter (and
        synced, if ``durable``): nobody replaced or removed it since."""
        if self._written is None or self.error is not None:
            return False
        text, synced, identity = self._written
        if text != document or (durable and not synced):
            return False
        try:
            return _identity(os.stat(self.path)) == identity
        except OSError:
            return False

    def run_started(self, record: RunRecord) -> None:
        # The first run writes at once (the file exists from the start); runs that join a
        # shared file appear at its next write.
        self._write(record, force=not self._records)

    def phase_started(self, record: RunRecord, phase: PhaseRecord) -> None:
        self._write(record)

    def phase_finished(self, record: RunRecord, phase: PhaseRecord) -> None:
        self._write(record)

    def run_finished(self, record: RunRecord) -> None:
        self._write(record, force=True, durable=True)
