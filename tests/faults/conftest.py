"""The fault suite reuses the end-to-end harness: the same sandbox fixtures, the same real command."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))

from e2e_harness import faults, kubeconfig, sandbox  # noqa: F401  (pytest fixtures)
