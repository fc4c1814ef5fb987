"""The flow tests may put the hostile-peer proxy (tests/hostile/proxy.py) in front of a
server, to see the requests a flow sends."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "hostile"))
