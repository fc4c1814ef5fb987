"""The layers stay honest: import-linter's contracts (pyproject.toml) fail the build."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold() -> None:
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    result = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout, result.stdout


def test_the_engine_is_importable_without_any_flow_or_client() -> None:
    code = (
        "import sys, orchestrator.engine; "
        "bad = [m for m in sys.modules if m.startswith(('orchestrator.flows', 'orchestrator.clients', "
        "'orchestrator.sandbox', 'kubernetes_asyncio', 'httpx'))]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)
