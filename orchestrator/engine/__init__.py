"""The provider-agnostic engine: runs any :class:`Flow` under a time budget, through a
state machine, and reports one :class:`RunRecord` to the console, JUnit and run.json.

It knows nothing of KAITO, HTTP or Kubernetes; see docs/ARCHITECTURE.md for the contract.
"""

from ._budget import Budget
from ._console import (
    ConsoleReporter,
    RunsView,
    print_runs,
    run_view,
    runs_lines,
    runs_table,
    runs_view,
    summary_lines,
    summary_table,
    verdict,
    wants_live,
)
from ._github import GitHubReporter
from ._junit import JUnitReporter, junit_xml, stopped_record, write_error_junit, write_junit
from ._junit_merge import MergedJUnit, merge_junit
from ._machine import RunMachine, machine_mermaid
from ._phase import Flow, Phase, PhaseContext, PhaseFailed
from ._record import (
    Finding,
    Outcome,
    PhaseKind,
    PhaseRecord,
    PhaseStatus,
    RunRecord,
    signal_exit_code,
)
from ._redact import MIN_SECRET_LENGTH, Redactor, StreamMasker, redact, redactor
from ._reporter import Reporter
from ._reports import (
    EXIT_REPORTS,
    REPORT_FILES,
    RUN_JSON,
    ReportProblem,
    clear_reports,
    describe_os_error,
    discard,
    write_error_reports,
    write_run_json,
    write_stopped_reports,
)
from ._runner import CleanupPolicy, Runner
from ._shared import SharedServices
from ._signals import STOP_SIGNALS, SignalHandlers, may_handle_signals

__all__ = [
    "EXIT_REPORTS",
    "MIN_SECRET_LENGTH",
    "REPORT_FILES",
    "RUN_JSON",
    "describe_os_error",
    "discard",
    "ReportProblem",
    "clear_reports",
    "write_error_reports",
    "write_run_json",
    "signal_exit_code",
    "stopped_record",
    "write_stopped_reports",
    "Budget",
    "CleanupPolicy",
    "ConsoleReporter",
    "Finding",
    "Flow",
    "GitHubReporter",
    "JUnitReporter",
    "Outcome",
    "Phase",
    "PhaseContext",
    "PhaseFailed",
    "PhaseKind",
    "PhaseRecord",
    "PhaseStatus",
    "Redactor",
    "Reporter",
    "RunMachine",
    "RunRecord",
    "RunsView",
    "Runner",
    "SharedServices",
    "SignalHandlers",
    "STOP_SIGNALS",
    "StreamMasker",
    "junit_xml",
    "may_handle_signals",
    "merge_junit",
    "MergedJUnit",
    "machine_mermaid",
    "print_runs",
    "redact",
    "redactor",
    "run_view",
    "runs_lines",
    "runs_table",
    "runs_view",
    "summary_lines",
    "summary_table",
    "verdict",
    "wants_live",
    "write_error_junit",
    "write_junit",
]
