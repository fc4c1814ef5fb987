"""The run record: bounded log, exit codes, JSON."""

from __future__ import annotations

import json

import pytest

from orchestrator.engine import PhaseRecord, RunRecord
from orchestrator.engine._record import LOG_MAX_BYTES, LOG_MAX_LINE_BYTES, LOG_MAX_LINES


def test_the_log_keeps_the_last_lines_within_its_line_bound() -> None:
    record = RunRecord(suite="s")
    for index in range(LOG_MAX_LINES + 500):
        record.append_log(f"line {index}")
    assert len(record.log) == LOG_MAX_LINES
    assert record.log[-1] == f"line {LOG_MAX_LINES + 499}"
    assert record.log_dropped_lines == 500
    assert record.log_text().startswith("[500 earlier log lines dropped]\n")


def test_the_log_stays_within_its_byte_bound_and_truncates_huge_lines() -> None:
    record = RunRecord(suite="s")
    record.append_log("é" * (LOG_MAX_LINE_BYTES * 3))
    assert record.log[0].endswith("[line truncated]")
    assert len(record.log[0].encode()) <= LOG_MAX_LINE_BYTES + 20
    for _ in range(200):
        record.append_log("x" * 4000)
    assert sum(len(line.encode()) + 1 for line in record.log) <= LOG_MAX_BYTES
    assert record.log[-1] == "x" * 4000


@pytest.mark.parametrize(
    ("outcome", "signame", "code"),
    [
        ("passed", None, 0),
        ("failed", None, 1),
        ("interrupted", "SIGINT", 130),
        ("interrupted", "SIGTERM", 143),
        ("interrupted", "SIGHUP", 129),
        ("interrupted", "NOT-A-SIGNAL", 130),
        (None, None, 1),
    ],
)
def test_exit_codes(outcome: str | None, signame: str | None, code: int) -> None:
    record = RunRecord(suite="s", outcome=outcome, interrupted_by=signame)
    assert record.exit_code == code


def test_to_dict_is_json_and_carries_the_derived_fields() -> None:
    record = RunRecord(
        suite="s",
        phases=[PhaseRecord(name="a", title="A", status="failed", reason="r")],
        outcome="failed",
    )
    data = json.loads(json.dumps(record.to_dict()))
    assert data["exit_code"] == 1
    assert data["failed_phase"] == "a"
    assert data["cleanup"]["name"] == "cleanup"


def test_statuses_are_validated() -> None:
    phase = PhaseRecord(name="a", title="A")
    with pytest.raises(ValueError):
        phase.status = "exploded"  # type: ignore[assignment]


def test_engine_properties_cannot_be_overwritten_by_a_phase() -> None:
    record = RunRecord(suite="s", properties={"model": "m"}, budget_total=600, outcome="passed")
    record.phases.append(
        PhaseRecord(name="a", title="A", properties={"outcome": "fake", "latency_ms": "7"})
    )
    props = record.all_properties()
    assert props["model"] == "m" and props["latency_ms"] == "7"
    assert props["outcome"] == "passed" and props["budget_seconds"] == "600"
