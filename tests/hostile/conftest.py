"""The hostile-peer suite reuses the end-to-end harness: the same sandbox, the same real command."""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[0] / "e2e"))
sys.path.insert(0, str(HERE.parents[0] / "faults"))
sys.path.insert(0, str(HERE))

from e2e_harness import kubeconfig, sandbox  # noqa: E402, F401  (pytest fixtures)
from hostile_harness import faults, hostile  # noqa: E402, F401  (pytest fixtures)
