"""Provider flows, and the toolkit to write one.

A flow is what the engine runs: named phases, diagnostics and cleanup. The
:class:`KubeFoundryFlow` is the lifecycle every KubeFoundry provider shares
(install once per run, guard the create, wait ready, inference, delete and wait
for the 404, diagnostics, leak check, cleanup by name and labels); a
:class:`ProviderProfile` says what is particular to one provider. KAITO is
:class:`~orchestrator.flows.kaito.KaitoProfile`, about forty lines.

The toolkit below is what those flows are built from, public so that a flow of
your own (in a package of its own) needs no private name:

- waiting: :func:`wait_for` asks an authority and sleeps on watches
  (:class:`WatchSpec`) until it answers; an ``inspect`` callback ends it early by
  raising :class:`Stop`, and a check that got nothing to decide on asks for another
  try by raising :class:`AskAgain`.
- pods: :func:`pod_problem` (will this pod ever be ready?), :func:`pod_ready`,
  :func:`pod_summary`, :data:`FATAL_WAITING_REASONS`; :class:`PullErrors` lets a
  wait see through a pull failure the kubelet retries (:func:`pull_is_definitive`).
- :func:`collect_diagnostics`: pods, describe, logs, events, the workload
  object and the backend exchanges, for any workload resource.
- :func:`call_backend` maps backend answers that end a phase to one-line
  reasons; :func:`side_by_side` asks independent questions at once.
- :class:`OncePerRun`: work the flows of one run share (an install), done once.

Running them: :func:`run_flows` runs flows (or :data:`FlowFactory` functions that
build them from the run's :class:`FlowContext`) side by side under one budget, with
shared watches, one JUnit report and SIGINT/SIGTERM handled, and returns the exit
code. The command line uses it too. Flows are found by name (:func:`find_flow`,
:func:`installed_flows`) among the built-in ones and the entry points that
installed packages declare in the ``orchestrator.flows`` group.
"""

from ._calls import Outcome, call_backend, side_by_side
from ._diagnostics import collect_diagnostics
from ._kubefoundry import FlowSettings, KubeFoundryFlow
from ._once import OncePerRun, Proof
from ._pods import (
    FATAL_WAITING_REASONS,
    PullErrors,
    is_pod,
    pod_problem,
    pod_ready,
    pull_is_definitive,
)
from ._profile import (
    ClusterView,
    Deployment,
    Endpoint,
    Owned,
    ProviderProfile,
    Readiness,
    Tracked,
)
from ._registry import (
    BUILTIN_FLOWS,
    ENTRY_POINT_GROUP,
    FlowEntry,
    FlowNotFound,
    find_flow,
    installed_flows,
)
from ._run import (
    ArtifactsInUse,
    FlowContext,
    FlowFactory,
    FlowRun,
    Target,
    exclusive_artifacts,
    run_flows,
    worst_exit,
)
from ._waiting import AskAgain, Stop, WatchSpec, pod_summary, wait_for

__all__ = [
    "BUILTIN_FLOWS",
    "ENTRY_POINT_GROUP",
    "FATAL_WAITING_REASONS",
    "ArtifactsInUse",
    "AskAgain",
    "FlowContext",
    "FlowEntry",
    "FlowFactory",
    "FlowNotFound",
    "FlowRun",
    "Target",
    "exclusive_artifacts",
    "find_flow",
    "installed_flows",
    "run_flows",
    "worst_exit",
    "ClusterView",
    "Deployment",
    "Endpoint",
    "FlowSettings",
    "KubeFoundryFlow",
    "OncePerRun",
    "Outcome",
    "Owned",
    "Proof",
    "ProviderProfile",
    "PullErrors",
    "Readiness",
    "Stop",
    "Tracked",
    "WatchSpec",
    "call_backend",
    "collect_diagnostics",
    "is_pod",
    "pod_problem",
    "pod_ready",
    "pod_summary",
    "pull_is_definitive",
    "side_by_side",
    "wait_for",
]
