"""Flows found by name: the built-in ones, and those installed packages register.

A package adds a flow by declaring an entry point in the ``orchestrator.flows``
group; ``python -m orchestrator run --flow NAME`` then runs it and
``python -m orchestrator flows`` lists it, without any change to this package::

    [project.entry-points."orchestrator.flows"]
    myflow = "myflow:flows"

The target is a :data:`~orchestrator.flows.FlowFactory`: called with the run's
:class:`~orchestrator.flows.FlowContext`, it returns the flows to run. Its
docstring's first line is the description ``orchestrator flows`` shows. A
``module:factory`` path works too, for a flow that is importable but not installed
as a package.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
from dataclasses import dataclass
from typing import cast

from ._run import FlowFactory

#: The entry-point group that packages declare their flows in.
ENTRY_POINT_GROUP = "orchestrator.flows"

#: Flows that ship with the orchestrator, found even without installed metadata (a
#: source checkout on ``PYTHONPATH``).
BUILTIN_FLOWS = {
    "kaito": "orchestrator.flows.kaito:flows",
    "kuberay": "orchestrator.flows.kuberay:flows",
    "dynamo": "orchestrator.flows.dynamo:flows",
}

_TARGET = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


class FlowNotFound(LookupError):
    """No flow by that name, or its factory cannot be loaded. The message says which."""


@dataclass(frozen=True)
class FlowEntry:
    """A flow that can be run by name."""

    name: str
    #: ``module:factory``.
    target: str
    #: "built-in", or the distribution that registered it ("myflow 0.1.0").
    origin: str

    def load(self) -> FlowFactory:
        """Import the factory; :class:`FlowNotFound` says why when it cannot be."""
        module_name, _, attr = self.target.partition(":")
        try:
            obj: object = importlib.import_module(module_name)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except Exception as exc:  # an import runs arbitrary code: any error means "broken"
            raise FlowNotFound(
                f"flow {self.name!r} ({self.target}, {self.origin}) cannot be loaded: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        if not callable(obj):
            raise FlowNotFound(
                f"flow {self.name!r}: {self.target} is a {type(obj).__name__}, not a factory"
            )
        return cast(FlowFactory, obj)

    def description(self) -> str:
        """The first line of the factory's docstring (or why it cannot be loaded)."""
        try:
            factory = self.load()
        except FlowNotFound as exc:
            return f"(cannot be loaded: {str(exc).split(': ', 1)[-1]})"
        doc = (factory.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else "(no description)"


def installed_flows() -> dict[str, FlowEntry]:
    """Every flow that can be run by name: built-in ones first, then entry points."""
    found = {name: FlowEntry(name, target, "built-in") for name, target in BUILTIN_FLOWS.items()}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in found and found[ep.name].target == ep.value:
            continue  # our own package's metadata naming a built-in flow
        dist = ep.dist
        origin = f"{dist.name} {dist.version}" if dist is not None else "entry point"
        found.setdefault(ep.name, FlowEntry(ep.name, ep.value, origin))
    return found


def find_flow(name: str) -> FlowEntry:
    """The flow called ``name``, or at ``module:factory``."""
    if ":" in name:
        if not _TARGET.match(name):
            raise FlowNotFound(f"{name!r} is not a module:factory path")
        return FlowEntry(name, name, "path")
    if name in BUILTIN_FLOWS:
        # Built-in flows come first in installed_flows(), whatever a package registers under
        # their names: no need to read every installed package's entry points (a few ms
        # of a run's start, twice: the command checks its flows, then loads them).
        return FlowEntry(name, BUILTIN_FLOWS[name], "built-in")
    flows = installed_flows()
    if name not in flows:
        known = ", ".join(sorted(flows)) or "none"
        raise FlowNotFound(
            f"no flow named {name!r} (installed: {known}); install the package that "
            f"provides it, or give its module:factory path"
        )
    return flows[name]
