"""Stand-ins for the system under test, over real HTTP on loopback.

``Sandbox`` runs a KubeFoundry API, a KAITO controller and real llama.cpp model servers
against a Kubernetes API (the test cluster, or a small in-process one), with faults
that can be switched on to make each failure the orchestrator must diagnose happen.
"""

from ._sandbox import Sandbox, SandboxOptions, serve_forever
from .faults import Defects, Delays, Faults, InferenceFault, TimelineEntry

__all__ = [
    "Defects",
    "Delays",
    "Faults",
    "InferenceFault",
    "Sandbox",
    "SandboxOptions",
    "TimelineEntry",
    "serve_forever",
]
