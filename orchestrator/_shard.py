"""``--shard INDEX/COUNT``: the part of a run's deployments that one CI job runs.

A matrix of jobs splits one list of deployments: job I of N runs the deployments whose
position p (counted from 0, in the order the configuration lists them) has
``p % N == I - 1``. Dealing them out round-robin keeps each shard's mix of providers
and sizes close to the whole list's, and every deployment runs in exactly one job
whatever N is. A shard may be empty (more jobs than deployments): it runs nothing and
says so.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")

_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_shard(text: str) -> tuple[int, int]:
    """``"2/3"`` -> ``(2, 3)``; a ValueError that says what is allowed otherwise."""
    match = _SHARD.match(text)
    if not match:
        raise ValueError(f"{text!r} is not INDEX/COUNT (for example 1/2)")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or count > 256:
        raise ValueError(f"{text!r}: COUNT must be between 1 and 256")
    if not 1 <= index <= count:
        raise ValueError(f"{text!r}: INDEX must be between 1 and COUNT ({count})")
    return index, count


def select_shard(items: Sequence[T], index: int, count: int) -> list[T]:
    """The items of shard ``index`` (1-based) of ``count``, in their order."""
    return [item for position, item in enumerate(items) if position % count == index - 1]
