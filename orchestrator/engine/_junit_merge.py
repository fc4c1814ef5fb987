"""Merge the JUnit files of several jobs (a CI matrix) into one file and one summary.

Each job of a matrix writes its own ``junit.xml`` (one testsuite per flow); the last
job reads them all, writes one document with every testsuite and the summed counts,
and a Markdown summary for the job page: a row per testsuite, the failures with their
messages, and the findings the flows recorded (``finding.NAME`` properties).

Files come from other jobs, so they are read as untrusted: a file that is missing or
is not JUnit XML is named in the summary and in :attr:`MergedJUnit.problems`, never
a traceback, and the rest is still merged.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ._junit import clean_xml_text

#: A job's junit.xml is a few hundred kB at most; anything far larger is not ours.
MAX_FILE_BYTES = 32 * 1024 * 1024
COUNTS = ("tests", "failures", "errors", "skipped")


@dataclass
class SuiteRow:
    """One testsuite, as the summary shows it."""

    source: str
    name: str
    tests: int
    failures: int
    errors: int
    skipped: int
    time: float
    messages: list[str] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)

    @property
    def outcome(self) -> str:
        if self.failures or self.errors:
            return "failed"
        if self.tests and self.skipped == self.tests:
            return "skipped"
        return "passed"


@dataclass
class MergedJUnit:
    xml: str
    rows: list[SuiteRow]
    problems: list[str]

    @property
    def failed(self) -> bool:
        return any(row.outcome == "failed" for row in self.rows)

    def markdown(self, title: str = "Integration tests") -> str:
        """The job summary: a table of testsuites, then failures, findings and problems."""
        icon = {"passed": "✅", "failed": "❌", "skipped": "⏭️"}
        totals = {k: sum(getattr(r, k) for r in self.rows) for k in COUNTS}
        verdict = "failed" if self.failed or self.problems else "passed"
        lines = [
            f"## {title}: {verdict}",
            "",
            f"{len(self.rows)} testsuite(s), {totals['tests']} testcases: "
            f"{totals['failures']} failed, {totals['errors']} errors, "
            f"{totals['skipped']} skipped.",
            "",
            "| Suite | Outcome | Tests | Failures | Errors | Skipped | Time (s) | From |",
            "|---|---|---:|---:|---:|---:|---:|---|",
        ]
        for r in self.rows:
            lines.append(
                f"| {_md(r.name)} | {icon[r.outcome]} {r.outcome} | {r.tests} | {r.failures} | "
                f"{r.errors} | {r.skipped} | {r.time:.1f} | {_md(r.source)} |"
            )
        failures = [(r, m) for r in self.rows for m in r.messages]
        if failures:
            lines += ["", "### Failures", ""]
            lines += [f"- **{_md(r.name)}**: {_md(m)}" for r, m in failures]
        findings = [(r, f) for r in self.rows for f in r.findings]
        if findings:
            lines += ["", "### Findings", ""]
            lines += [f"- **{_md(r.name)}**: {_md(f)}" for r, f in findings]
        if self.problems:
            lines += ["", "### Reports that could not be read", ""]
            lines += [f"- {_md(p)}" for p in self.problems]
        return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _int(element: ET.Element, key: str) -> int:
    try:
        return max(0, int(element.get(key, "0")))
    except ValueError:
        return 0


def _float(element: ET.Element, key: str) -> float:
    try:
        return max(0.0, float(element.get(key, "0")))
    except ValueError:
        return 0.0


def _suites(path: Path) -> list[ET.Element]:
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ValueError(f"{size} bytes, more than a JUnit report of ours can be")
    root = ET.parse(path).getroot()
    if root.tag == "testsuite":
        return [root]
    if root.tag != "testsuites":
        raise ValueError(f"the root element is <{root.tag}>, not <testsuites> or <testsuite>")
    return list(root.findall("testsuite"))


def _row(source: str, suite: ET.Element) -> SuiteRow:
    cases = suite.findall("testcase")
    row = SuiteRow(
        source=source,
        name=suite.get("name", "?"),
        tests=_int(suite, "tests") or len(cases),
        failures=_int(suite, "failures"),
        errors=_int(suite, "errors"),
        skipped=_int(suite, "skipped"),
        time=_float(suite, "time"),
    )
    for case in cases:
        for tag in ("failure", "error"):
            for bad in case.findall(tag):
                row.messages.append(bad.get("message") or case.get("name") or tag)
    for prop in suite.iter("property"):
        name = prop.get("name", "")
        if name.startswith("finding."):
            row.findings.append(prop.get("value") or name.removeprefix("finding."))
    return row


def merge_junit(paths: Sequence[Path]) -> MergedJUnit:
    """One JUnit document holding every testsuite of ``paths``, in the order given."""
    root = ET.Element("testsuites", {"name": "orchestrator"})
    rows: list[SuiteRow] = []
    problems: list[str] = []
    longest = 0.0
    for path in paths:
        try:
            suites = _suites(path)
            source_time = max((_float(s, "time") for s in suites), default=0.0)
        except (OSError, ET.ParseError, ValueError) as exc:
            problems.append(f"{path}: {clean_xml_text(str(exc), 300)}")
            continue
        # The jobs of a matrix run side by side: the merged time is the longest one.
        longest = max(longest, source_time)
        for suite in suites:
            rows.append(_row(path.parent.name or str(path), suite))
            root.append(suite)
    for key in COUNTS:
        root.set(key, str(sum(getattr(r, key) for r in rows)))
    root.set("time", f"{longest:.3f}")
    ET.indent(root)
    xml = '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode")
    return MergedJUnit(xml=xml + "\n", rows=rows, problems=problems)
