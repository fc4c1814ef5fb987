"""Stand-ins for the system under test, over real HTTP on loopback.

``Sandbox`` runs a KubeFoundry API, a KAITO controller and real llama.cpp model servers
against a Kubernetes API (the test cluster, or a small in-process one), with faults
that can be switched on to make each failure the orchestrator must diagnose happen.

The fault model is imported at once; the servers (aiohttp, the Kubernetes client) only
when first used, so that validating ``--sandbox-fault`` or listing the fault names in
``run --help`` does not pay for them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .faults import Defects, Delays, Faults, InferenceFault, TimelineEntry

if TYPE_CHECKING:
    from ._sandbox import Sandbox, SandboxOptions, serve_forever

_LAZY = ("Sandbox", "SandboxOptions", "serve_forever")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from . import _sandbox

        return getattr(_sandbox, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
