"""Faults a real API server shows now and then, switchable at run time so clients prove they cope."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class KubeFaults:
    # Close every watch stream after this many seconds (clients must reconnect).
    watch_cut_after: float | None = None
    # The next watch request answers 410 Gone (an ERROR event in a 200 stream), then this resets.
    gone_once: bool = False
    # For this many seconds after a CRD becomes Established, list/watch of its
    # resources answer 429 with Retry-After: 1, as while a watch cache fills.
    too_many_requests_after_crd: float = 0
