"""JUnit output: valid against the junit-10 schema, truthful, bounded, always written."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
import xmlschema
from engine_fakes import FakeFlow, wait_for

from orchestrator.engine import (
    Budget,
    JUnitReporter,
    PhaseContext,
    PhaseFailed,
    PhaseRecord,
    Runner,
    RunRecord,
    write_error_junit,
    write_junit,
)

SCHEMA = xmlschema.XMLSchema(Path(__file__).with_name("junit.xsd"))


async def run_flow(flow: FakeFlow, tmp_path: Path, **kwargs: object) -> tuple[RunRecord, Path]:
    path = tmp_path / "junit.xml"
    runner = Runner(
        flow,
        budget=Budget(60, 5, diagnose_floor=0.5, cleanup_floor=1),
        reporters=[JUnitReporter(path)],
        artifacts_dir=tmp_path / "artifacts",
        **kwargs,  # type: ignore[arg-type]
    )
    return await runner.run(), path


def parse(path: Path) -> ET.Element:
    SCHEMA.validate(str(path))
    return ET.parse(path).getroot()


def cases(root: ET.Element) -> list[ET.Element]:
    return root.findall("./testsuite/testcase")


def test_the_schema_rejects_what_ci_would_reject(tmp_path: Path) -> None:
    bad = tmp_path / "bad.xml"
    bad.write_text('<testsuites><testsuite name="s" tests="one"/></testsuites>')
    assert not SCHEMA.is_valid(str(bad))
    bad.write_text('<testsuites><testsuite tests="1"/></testsuites>')
    assert not SCHEMA.is_valid(str(bad))


@pytest.mark.anyio
async def test_a_passing_run_is_valid_and_lists_phases_then_cleanup(tmp_path: Path) -> None:
    flow = FakeFlow(("install", "pass"), ("wait-ready", "pass"))
    _, path = await run_flow(flow, tmp_path)
    root = parse(path)
    suite = root.find("testsuite")
    assert suite is not None
    assert suite.attrib["name"] == "fake"
    assert (
        suite.attrib["tests"],
        suite.attrib["failures"],
        suite.attrib["errors"],
        suite.attrib["skipped"],
    ) == ("3", "0", "0", "0")
    assert [c.attrib["name"] for c in cases(root)] == ["01 Install", "02 Wait Ready", "03 Cleanup"]
    assert {c.attrib["classname"] for c in cases(root)} == {"orchestrator.fake"}
    assert all(list(c) == [] for c in cases(root))
    assert root.attrib["tests"] == "3"


@pytest.mark.anyio
async def test_a_failure_names_the_phase_reason_and_deadline_and_skips_the_rest(
    tmp_path: Path,
) -> None:
    flow = FakeFlow(("install", "pass"), ("deploy", "fail", 7.0), ("infer", "pass"))
    _, path = await run_flow(flow, tmp_path)
    root = parse(path)
    names = [c.attrib["name"] for c in cases(root)]
    assert names == ["01 Install", "02 Deploy", "03 Infer", "04 Diagnose", "05 Cleanup"]
    failure = cases(root)[1].find("failure")
    assert failure is not None
    assert failure.attrib["message"] == "Deploy: deploy went wrong (deadline 7.0 s)"
    assert failure.text is not None and "details of deploy" in failure.text
    skipped = cases(root)[2].find("skipped")
    assert skipped is not None and skipped.attrib["message"] == "not reached"
    suite = root.find("testsuite")
    assert suite is not None
    assert (suite.attrib["failures"], suite.attrib["skipped"]) == ("1", "1")


@pytest.mark.anyio
async def test_a_timeout_failure_says_timed_out(tmp_path: Path) -> None:
    _, path = await run_flow(FakeFlow(("wait-ready", "hang", 0.03)), tmp_path)
    failure = cases(parse(path))[0].find("failure")
    assert failure is not None and failure.attrib["type"] == "timeout"
    message = failure.attrib["message"]
    # How long the phase really ran depends on the machine's load; the shape does not.
    assert re.fullmatch(
        r"Wait Ready timed out after \d+\.\d s \(phase timeout 0\.03 s;.*\(deadline 0\.0 s\)",
        message,
        re.DOTALL,
    ), message


@pytest.mark.anyio
async def test_kept_resources_show_as_a_skipped_cleanup_with_hints(tmp_path: Path) -> None:
    flow = FakeFlow(("install", "fail"), hints=("kubectl get ws -n demo",))
    _, path = await run_flow(flow, tmp_path, cleanup_policy="on-success")
    cleanup = cases(parse(path))[-1]
    assert cleanup.attrib["name"] == "03 Cleanup"
    skipped = cleanup.find("skipped")
    assert skipped is not None
    assert skipped.attrib["message"] == "resources kept (cleanup policy on-success)"
    assert skipped.text == "kubectl get ws -n demo"


@pytest.mark.anyio
async def test_a_failed_cleanup_is_a_failure_and_a_broken_diagnose_an_error(
    tmp_path: Path,
) -> None:
    async def diagnose(ctx: PhaseContext, failed: PhaseRecord) -> None:
        raise OSError("disk full")

    async def cleanup(ctx: PhaseContext) -> None:
        raise PhaseFailed("namespace stuck terminating")

    flow = FakeFlow(("install", "fail"), diagnose=diagnose, cleanup=cleanup)
    _, path = await run_flow(flow, tmp_path)
    root = parse(path)
    diagnose_case, cleanup_case = cases(root)[-2:]
    error = diagnose_case.find("error")
    assert error is not None and error.attrib["message"] == "Diagnose: OSError: disk full"
    failure = cleanup_case.find("failure")
    assert failure is not None and "namespace stuck terminating" in failure.attrib["message"]
    suite = root.find("testsuite")
    assert suite is not None
    assert (suite.attrib["failures"], suite.attrib["errors"]) == ("2", "1")


@pytest.mark.anyio
async def test_properties_include_flow_budget_time_and_phase_extras(tmp_path: Path) -> None:
    async def infer(ctx: PhaseContext) -> None:
        ctx.set_property("inference_latency_ms", 123)

    flow = FakeFlow(("infer", infer), properties={"model": "phi-4", "provider": "kaito"})
    record, path = await run_flow(flow, tmp_path)
    props = {
        p.attrib["name"]: p.attrib["value"]
        for p in parse(path).findall("./testsuite/properties/property")
    }
    assert props["model"] == "phi-4" and props["provider"] == "kaito"
    assert props["inference_latency_ms"] == "123"
    assert props["budget_seconds"] == "60"
    assert props["budget_reserve_seconds"] == "5"
    assert float(props["time_spent_seconds"]) == pytest.approx(record.time_spent, abs=1e-3)
    assert props["outcome"] == "passed" and props["exit_code"] == "0"


@pytest.mark.anyio
async def test_control_characters_and_huge_logs_still_give_valid_bounded_xml(
    tmp_path: Path,
) -> None:
    nasty = "\x00\x01\x07\x1b[31mred\x1b[0m\x0b\x0c\ufffe\ud800 <&> ]]>"

    async def noisy(ctx: PhaseContext) -> None:
        for _ in range(5000):
            ctx.log(nasty + "y" * 300)
        ctx.set_property("note", nasty)
        raise PhaseFailed(f"bad {nasty}", detail=nasty * 50_000)

    record, path = await run_flow(FakeFlow(("install", noisy)), tmp_path)
    # The record is bounded; push past it to check the writer bounds on its own too.
    record.log = [nasty + "z" * 1000 for _ in range(2000)]
    write_junit([record], path)
    assert path.stat().st_size < 700_000
    root = parse(path)
    out = root.find("./testsuite/system-out")
    assert out is not None and out.text is not None
    assert out.text.startswith("[") and "characters truncated]" in out.text.splitlines()[0]
    assert "\x00" not in out.text and "\x1b" not in out.text and "red" in out.text
    failure = cases(root)[0].find("failure")
    assert failure is not None
    assert failure.attrib["message"].startswith("Install: bad red <&> ]]>")
    assert len(failure.attrib["message"]) <= 1024


def test_several_suites_go_into_one_file(tmp_path: Path) -> None:
    first = RunRecord(
        suite="kaito",
        phases=[PhaseRecord(name="a", title="A", status="passed")],
        outcome="passed",
        time_spent=1.5,
    )
    second = RunRecord(
        suite="other",
        phases=[PhaseRecord(name="a", title="A", status="failed", reason="no", allowed=3.0)],
        outcome="failed",
        time_spent=2.0,
    )
    path = write_junit([first, second], tmp_path / "out" / "junit.xml")
    root = parse(path)
    assert [s.attrib["name"] for s in root.findall("testsuite")] == ["kaito", "other"]
    # Records without timestamps: the longest run stands for the wall time.
    assert (root.attrib["tests"], root.attrib["failures"], root.attrib["time"]) == (
        "4",
        "1",
        "2.000",
    )
    assert [p.name for p in path.parent.iterdir()] == ["junit.xml"]  # no temp files left


def test_the_total_time_is_the_wall_time_of_runs_that_overlap(tmp_path: Path) -> None:
    """Five flows of 19 s each, side by side, took 19 s, not 95 s: CI shows the total as
    the job's duration."""
    from datetime import UTC, datetime, timedelta

    start = datetime(2026, 1, 1, tzinfo=UTC)
    records = [
        RunRecord(
            suite=f"kaito-{i}",
            phases=[PhaseRecord(name="a", title="A", status="passed")],
            outcome="passed",
            started_at=start + timedelta(seconds=i * 0.25),
            ended_at=start + timedelta(seconds=i * 0.25 + 19),
            time_spent=19.0,
        )
        for i in range(5)
    ]
    root = parse(write_junit(records, tmp_path / "junit.xml"))
    assert root.attrib["time"] == "20.000"
    assert [s.attrib["time"] for s in root.findall("testsuite")] == ["19.000"] * 5


def test_a_configuration_error_still_produces_a_report(tmp_path: Path) -> None:
    path = write_error_junit(
        tmp_path / "junit.xml",
        "kaito",
        "KUBECONFIG \x1b not found",
        properties={"provider": "kaito"},
    )
    root = parse(path)
    case = cases(root)[0]
    assert case.attrib["name"] == "01 Configuration"
    failure = case.find("failure")
    assert failure is not None
    assert failure.attrib["message"] == "Configuration: KUBECONFIG not found"
    assert cases(root)[1].find("skipped") is not None


@pytest.mark.anyio
async def test_the_report_exists_while_the_run_is_going_and_after_cancellation(
    tmp_path: Path,
) -> None:
    path = tmp_path / "junit.xml"
    seen: list[list[str]] = []

    async def peek(ctx: PhaseContext) -> None:
        root = parse(path)
        seen.append([c.find("*").tag if len(c) else "ok" for c in cases(root)])
        await anyio.sleep_forever()

    flow = FakeFlow(("install", "pass"), ("deploy", peek), ("infer", "pass"))
    runner = Runner(
        flow,
        budget=Budget(60, 5),
        reporters=[JUnitReporter(path)],
        artifacts_dir=tmp_path / "artifacts",
    )
    with anyio.fail_after(30):  # only a hang reaches this
        async with anyio.create_task_group() as tg:
            tg.start_soon(runner.run)
            await wait_for(flow.event("deploy"))
            await anyio.wait_all_tasks_blocked()
            tg.cancel_scope.cancel()
    # While deploy ran: install passed, deploy running (error), rest not reached.
    assert seen == [["ok", "error", "skipped", "skipped"]]
    root = parse(path)
    # Cancelled without a signal: deploy failed, and cleanup still ran (and passed).
    assert [c.find("*").tag if len(c) else "ok" for c in cases(root)] == [
        "ok",
        "failure",
        "skipped",
        "ok",
    ]
    assert root.find("./testsuite/properties/property[@name='outcome']").attrib["value"] == (
        "failed"
    )


@pytest.mark.anyio
async def test_one_reporter_shared_by_concurrent_runs_writes_a_suite_each(tmp_path: Path) -> None:
    import anyio

    from orchestrator.engine import Budget, JUnitReporter, Runner

    reporter = JUnitReporter(tmp_path / "junit.xml")
    flows = [
        FakeFlow(("install", "pass"), name="first"),
        FakeFlow(("install", "fail"), name="second"),
    ]
    async with anyio.create_task_group() as tg:
        for flow in flows:
            runner = Runner(
                flow, budget=Budget(10, 2), reporters=[reporter], artifacts_dir=tmp_path / flow.name
            )
            tg.start_soon(runner.run)
    root = ET.parse(tmp_path / "junit.xml").getroot()
    suites = {s.get("name"): s for s in root.iter("testsuite")}
    assert set(suites) == {"first", "second"}
    assert suites["first"].get("failures") == "0" and suites["second"].get("failures") == "1"
    assert root.get("tests") == str(sum(int(s.get("tests")) for s in suites.values()))


def test_a_shared_reporter_reserializes_only_the_runs_that_changed(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Many runs on one file: each write costs the changed suites, not all of them,
    and the file ends up exactly what a full rewrite would give."""
    from orchestrator.engine import _junit, junit_xml

    serialized: list[str] = []
    real = _junit._suite_xml
    monkeypatch.setattr(
        _junit, "_suite_xml", lambda r, *a: (serialized.append(r.suite), real(r, *a))[1]
    )
    now = [0.0]
    reporter = JUnitReporter(tmp_path / "junit.xml", clock=lambda: now[0])
    # Fixed times: without them each write stamps "now" (a start, or the end of a run
    # still going), and two writes apart on a loaded machine would differ in that alone.
    began = datetime(2026, 1, 1, tzinfo=UTC)
    records = [
        RunRecord(suite=f"run-{i}", started_at=began, ended_at=began + timedelta(seconds=3))
        for i in range(20)
    ]
    for record in records:
        reporter.run_started(record)
    assert parse(reporter.path).findall("testsuite")[0].get("name") == "run-0"
    for step in range(3):
        now[0] += 1.0  # past the interval: every step of every run may write
        for record in records:
            phase = PhaseRecord(name=f"p{step}", title=f"P{step}", status="passed", duration=0.1)
            record.phases.append(phase)
            reporter.phase_finished(record, phase)
    for record in records:
        record.outcome = "passed"
        reporter.run_finished(record)
    # 20 runs x (start, 3 steps, end) events: far fewer than the 20 x 100 suites a
    # rewrite-everything writer would serialize.
    assert len(serialized) <= 20 * 5 + 5
    assert reporter.path.read_text() == junit_xml(records)
    assert len(parse(reporter.path).findall("testsuite")) == 20


def _secret_run(began: datetime) -> RunRecord:
    return RunRecord(
        suite="secrets",
        properties={"api_url": "http://127.0.0.1:1"},
        phases=[PhaseRecord(name=n, title=n.title()) for n in ("install", "deploy")],
        started_at=began,
        ended_at=began + timedelta(seconds=1),
    )


def test_every_write_masks_a_secret_even_one_registered_after_it_was_written(
    tmp_path: Path,
) -> None:
    """The reporter cleans each string once and keeps it: a secret that reaches a reason,
    a detail, a property, a finding or the log is masked in every version of the file,
    also when it was registered after an earlier write had already put it there."""
    from orchestrator.engine import redactor
    from orchestrator.engine._record import Finding

    early, late = "early-secret-0123456789", "late-secret-9876543210"
    reporter = JUnitReporter(tmp_path / "junit.xml")
    record = _secret_run(datetime(2026, 1, 1, tzinfo=UTC))
    install, deploy = record.phases
    versions: list[str] = []
    redactor.add(early)
    try:
        reporter.run_started(record)
        versions.append(reporter.path.read_text())
        install.status = "running"
        install.reason = f"Bearer {early} rejected; {late} sent"
        reporter.phase_started(record, install)
        versions.append(reporter.path.read_text())
        # Registered after the reason was written (unmasked, for nobody knew it yet):
        # from now on no write may carry it, though the reason did not change.
        redactor.add(late)
        install.properties["echo"] = f"{early}/{late}"
        reporter.phase_started(record, install)
        versions.append(reporter.path.read_text())
        install.status, install.detail = "failed", f"body: {late}\n{early}"
        install.findings.append(Finding(name="echo", message=f"echoed {late}"))
        record.append_log(f"install: {early}")
        reporter.phase_finished(record, install)
        versions.append(reporter.path.read_text())
        deploy.status, deploy.reason = "skipped", f"not reached ({late})"
        record.outcome = "failed"
        reporter.run_finished(record)
        versions.append(reporter.path.read_text())
    finally:
        redactor.clear()
    assert late in versions[1]  # what a write before the registration could not know
    for version in versions:
        assert early not in version
    for version in versions[2:]:
        assert late not in version
        ET.fromstring(version)
    parse(reporter.path)
    # Masked where each string stands, not dropped.
    root = ET.fromstring(versions[-1])
    failure = root.find("./testsuite/testcase/failure")
    assert failure is not None and "***" in failure.attrib["message"]
    assert "body: ***" in (failure.text or "")


def test_the_cache_of_clean_strings_gives_the_same_file_as_cleaning_each_anew(
    tmp_path: Path,
) -> None:
    from orchestrator.engine import junit_xml

    reporter = JUnitReporter(tmp_path / "junit.xml")
    record = _secret_run(datetime(2026, 1, 1, tzinfo=UTC))
    reporter.run_started(record)
    for phase in record.phases:
        phase.status = "running"
        reporter.phase_started(record, phase)
        assert reporter.path.read_text() == junit_xml([record])
        phase.status, phase.reason, phase.duration = "passed", "fine \x1b[1mbold\x1b[0m", 0.5
        record.append_log(f"{phase.title}: passed")
        reporter.phase_finished(record, phase)
        assert reporter.path.read_text() == junit_xml([record])


def test_a_write_of_the_same_bytes_is_skipped_unless_the_file_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run's end writes the file durably and the app flushes once more: the second
    write would rename the same bytes over the file again. It is skipped while the file
    is the one the reporter wrote, and made when someone removed or replaced it."""
    from orchestrator.engine import _junit

    writes: list[bool] = []
    real = _junit.atomic_write_text

    def counted(*args: Any, **kwargs: Any) -> Path:
        writes.append(kwargs["durable"])
        return real(*args, **kwargs)

    monkeypatch.setattr(_junit, "atomic_write_text", counted)
    reporter = JUnitReporter(tmp_path / "junit.xml")
    record = _secret_run(datetime(2026, 1, 1, tzinfo=UTC))
    reporter.run_started(record)
    reporter.run_started(record)
    assert writes == [False]
    # Synced at the end, though the bytes are those of the last progress write.
    record.outcome = "passed"
    reporter.run_finished(record)
    reporter.run_finished(record)
    assert reporter.flush() == reporter.path
    assert writes == [False, True]
    content = reporter.path.read_text()
    reporter.path.unlink()
    reporter.flush()
    assert reporter.path.read_text() == content
    reporter.path.write_text("<testsuites/>")  # the same file, other bytes
    reporter.flush()
    assert reporter.path.read_text() == content
    assert writes == [False, True, True, True]
    # A change is written.
    record.phases[0].status = "passed"
    reporter.phase_finished(record, record.phases[0])
    assert len(writes) == 5
    assert len(cases(parse(reporter.path))[0]) == 0  # passed: no skipped/failure child


def test_a_secret_registered_later_is_masked_in_every_run_of_a_shared_file(
    tmp_path: Path,
) -> None:
    """A shared reporter serializes again only the runs that reported: a run that said a
    secret before it was registered must be serialized again too, not kept as it was."""
    from orchestrator.engine import redactor

    secret = "shared-secret-0123456789"
    now = [0.0]
    reporter = JUnitReporter(tmp_path / "junit.xml", clock=lambda: now[0])
    began = datetime(2026, 1, 1, tzinfo=UTC)
    quiet, busy = (_secret_run(began) for _ in range(2))
    quiet.suite = "quiet"
    quiet.phases[0].reason = f"peer echoed {secret}"
    reporter.run_started(quiet)
    reporter.run_started(busy)
    reporter.flush()
    assert secret in reporter.path.read_text()  # nobody knew it was one yet
    redactor.add(secret)
    try:
        now[0] += 1.0
        busy.phases[0].status = "passed"
        reporter.phase_finished(busy, busy.phases[0])
        text = reporter.path.read_text()
    finally:
        redactor.clear()
    assert secret not in text
    assert "peer echoed ***" in text


def test_the_cache_of_clean_strings_stays_bounded(tmp_path: Path) -> None:
    """A long run whose phases report ever new reasons must not keep each of them."""
    from orchestrator.engine._junit import _CachedCleaner

    reporter = JUnitReporter(tmp_path / "junit.xml")
    cleaner = reporter._clean
    assert isinstance(cleaner, _CachedCleaner)
    record = _secret_run(datetime(2026, 1, 1, tzinfo=UTC))
    phase = record.phases[0]
    phase.status = "running"
    reporter.run_started(record)
    for step in range(400):
        phase.reason = f"waiting, step {step}: " + "x" * 4000
        reporter.phase_started(record, phase)
        assert cleaner._chars <= cleaner.MAX_TOTAL_CHARS + 3 * 8200
    text = reporter.path.read_text()
    assert "step 399: " + "x" * 4000 in text and "step 398" not in text


def test_a_secret_registered_after_a_clear_is_masked_though_the_count_is_the_same(
    tmp_path: Path,
) -> None:
    """The reporter keeps what it cleaned while the redactor masks the same values: after
    ``clear()`` and a new value of the same shape, the redactor holds as many values as
    before, and a string cleaned before must still be cleaned again."""
    from orchestrator.engine import redactor

    first, second = "first-secret-0123456789", "other-secret-9876543210"
    reporter = JUnitReporter(tmp_path / "junit.xml")
    record = _secret_run(datetime(2026, 1, 1, tzinfo=UTC))
    record.phases[0].reason = f"peer echoed {second}"
    redactor.add(first)
    try:
        reporter.run_started(record)
        assert second in reporter.path.read_text()  # nobody knew it was one yet
        count = redactor.secrets
        redactor.clear()
        redactor.add(second)
        assert redactor.secrets == count
        record.phases[1].status = "running"
        reporter.phase_started(record, record.phases[1])
        text = reporter.path.read_text()
    finally:
        redactor.clear()
    assert second not in text
    assert "peer echoed ***" in text


def test_a_write_made_while_a_secret_is_being_registered_is_masked_again_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another thread may write the file while ``add`` builds its patterns: that write
    masks with the old ones, and the reporter must not keep it as masked with the new."""
    from orchestrator.engine import redactor

    secret = "racing-secret-0123456789"
    reporter = JUnitReporter(tmp_path / "junit.xml")
    record = _secret_run(datetime(2026, 1, 1, tzinfo=UTC))
    record.phases[0].reason = f"peer echoed {secret}"
    reporter.run_started(record)
    real = redactor._compile

    def compile_after_a_write() -> None:
        record.phases[1].status = "running"
        reporter.phase_started(record, record.phases[1])  # the value is known, not masked
        real()

    monkeypatch.setattr(redactor, "_compile", compile_after_a_write)
    try:
        redactor.add(secret)
        monkeypatch.undo()
        record.phases[1].status = "passed"
        reporter.phase_finished(record, record.phases[1])
        text = reporter.path.read_text()
    finally:
        redactor.clear()
    assert secret not in text
    assert "peer echoed ***" in text


#: A change to each field of a phase's record (the test below asserts that none is left
#: out): a field that a testcase comes to show is then changed here too.
PHASE_CHANGES: dict[str, Any] = {
    "name": "installed",
    "title": "Install Again",
    "timeout": 7.0,
    "allowed": 6.5,
    "started_at": datetime(2026, 1, 1, 0, 0, 1, tzinfo=UTC),
    "ended_at": datetime(2026, 1, 1, 0, 0, 2, tzinfo=UTC),
    "offset": 0.25,
    "duration": 2.5,
    "reason": "another reason",
    "detail": "another detail",
    "timed_out": True,
    "last_seen": "Pending",
    "note": "waiting for the pod",
    "failing": "503 from the API",
    "properties": {"latency_ms": "12"},
    "findings": [{"name": "second", "message": "another contradiction"}],
    # Last: the phase stays a failure, whose testcase shows the most, until here.
    "kind": "diagnose",
    "status": "interrupted",
}


def test_a_testcase_kept_from_the_last_write_is_rebuilt_when_anything_it_shows_changes(
    tmp_path: Path,
) -> None:
    """The reporter keeps each testcase it built and reuses it while what it was built
    from is unchanged: after a change to any field of a phase's record (one at a time, the
    phase failed so that its deadline, timeout flag, reason and findings all show), to its
    place in the run, or to the suite, the kept file says what a fresh build says."""
    from orchestrator.engine._junit import _CachedCleaner, _suite_xml
    from orchestrator.engine._record import Finding

    assert set(PHASE_CHANGES) == set(PhaseRecord.model_fields), "a field without a change"
    record = _secret_run(datetime(2026, 1, 1, tzinfo=UTC))
    phase = record.phases[1]
    phase.status, phase.reason, phase.detail = "failed", "boom", "a trace"
    phase.duration, phase.allowed = 1.0, 5.0
    phase.findings = [Finding(name="first", message="a contradiction")]
    cached = _CachedCleaner()
    assert _suite_xml(record, cached) == _suite_xml(record)  # the cache is filled
    for field, value in PHASE_CHANGES.items():
        before = _suite_xml(record)[0]
        setattr(phase, field, value)
        assert _suite_xml(record, cached) == _suite_xml(record), field
        if field in (
            "title",
            "allowed",
            "duration",
            "reason",
            "detail",
            "timed_out",
            "findings",
            "kind",
            "status",
        ):
            assert _suite_xml(record)[0] != before, f"{field} does not show: a test of nothing"
    record.phases.insert(0, PhaseRecord(name="first", title="First"))  # its index moves
    assert _suite_xml(record, cached) == _suite_xml(record), "index"
    record.suite = "renamed"
    assert _suite_xml(record, cached) == _suite_xml(record), "suite"
