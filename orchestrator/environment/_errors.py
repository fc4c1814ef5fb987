"""The one exception the environment raises.

A run that cannot get a cluster or a backend has nothing to test, and the person
reading the report needs one line saying which of the two broke and what to do
about it; the longer evidence (a log tail) rides along in ``detail`` so that the
engine can put it in the report without drowning the verdict.
"""

from __future__ import annotations


class EnvironmentSetupError(Exception):
    """Creating, reaching or tearing down the test environment failed.

    ``str(error)`` is one line a human can act on; ``detail`` is optional
    multi-line context (the last lines of a log, a command's output).
    """

    def __init__(self, message: str, *, detail: str | None = None) -> None:
        one_line = " ".join(message.split())
        super().__init__(one_line)
        self.message = one_line
        self.detail = detail
