"""Faults a real API server shows now and then, switchable at run time so clients prove they cope."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class KubeFaults:
    # Close every watch stream after this many seconds (clients must reconnect).
    watch_cut_after: float | None = None
    # The next watch request answers 410 Gone (an ERROR event in a 200 stream), then this resets.
    gone_once: bool = False
    # When set, only a watch with exactly this labelSelector is answered that 410.
    gone_label_selector: str | None = None
    # For this many seconds after a CRD becomes Established, list/watch of its
    # resources answer 429 with Retry-After: 1, as while a watch cache fills.
    too_many_requests_after_crd: float = 0
    # Whether lists answer that 429 too, or only watches (as the test cluster's API server
    # does: a list is served from storage while the watch cache fills).
    too_many_requests_lists: bool = True
