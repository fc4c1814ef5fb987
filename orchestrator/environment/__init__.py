"""The environment a run tests against: an ephemeral kind cluster and the KubeFoundry backend.

- :class:`KindCluster`: create (retried once) or reuse a kind cluster, watch its nodes
  until Ready, check the API server answers, delete it only if this run made it.
- :class:`BackendProcess`: the backend as a child process, healthy when
  ``GET /api/health`` answers 200, reported at once if it dies, stopped with SIGTERM
  then SIGKILL.
- :mod:`.phases`: the same steps as engine phases (``setup_phases``) and a
  ``teardown`` that always runs, so their times land in the run record.

Every failure is an :class:`EnvironmentSetupError` with a one-line message. This
package uses the engine's types and the clients, never a flow, the command line or
the sandbox.
"""

from ._backend import BackendProcess
from ._errors import EnvironmentSetupError
from ._kind import KindCluster
from .phases import TeardownStep, setup_phases, teardown

__all__ = [
    "BackendProcess",
    "EnvironmentSetupError",
    "KindCluster",
    "TeardownStep",
    "setup_phases",
    "teardown",
]
