"""The test clusters are launched as the shared test cluster's ``start`` launches them.

The pool in ``tests/_testcluster.py`` starts etcd and the API server itself, without the
``start`` script (its readiness loop and fresh certificates cost CPU no test needs). That
copies the script's command lines, so a ``start`` that changes them would leave our
clusters running differently, or failing in every cluster test at once. This test reads
``start`` and holds the two to the same flags, and fails by name when they part.
"""

from __future__ import annotations

import re
from pathlib import Path

import _testcluster
import pytest

FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def invocation(script: str, binary: str) -> str:
    """The command line in ``script`` that runs ``"$BIN/<binary>"`` with flags, joined over
    its backslash continuations."""
    lines = script.splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith(f'"$BIN/{binary}" --') and "--print-free-ports" not in stripped:
            joined = [stripped]
            while joined[-1].endswith("\\") and i + len(joined) < len(lines):
                joined.append(lines[i + len(joined)].strip())
            return " ".join(joined)
    raise AssertionError(f"start no longer runs {binary} with flags; see {binary}'s launch")


def flags(words: str | list[str]) -> set[str]:
    text = words if isinstance(words, str) else " ".join(words)
    return set(FLAG.findall(text))


@pytest.fixture
def start_script() -> str:
    home = _testcluster.home()
    if home is None:
        pytest.skip("TESTCLUSTER_HOME names no test cluster (.ci/run sets it when present)")
    return (home / "start").read_text()


def test_etcd_and_the_api_server_get_the_flags_start_gives_them(
    start_script: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Node labels are passed only when set, by start and by us alike.
    monkeypatch.setenv("TESTCLUSTER_NODE_LABELS", "zone=a")
    etcd, apiserver = _testcluster.launch_argv(
        tmp_path / "bin", tmp_path / "run", tmp_path / "certs", "token", 2379, 2380
    )
    assert flags(etcd) == flags(invocation(start_script, "etcd"))
    # --crd: start installs the CRD files it is given; our clusters start with none.
    assert flags(apiserver) == flags(invocation(start_script, "miniapiserver")) - {"--crd"}


def test_the_flags_are_read_from_the_script_s_command_lines() -> None:
    """The reader itself, on a script shaped like start: continuations joined, the free-port
    query skipped, a flag inside a variable's expansion found."""
    script = "\n".join(
        [
            'read -r A B < <("$BIN/miniapiserver" --print-free-ports 2)',
            '  "$BIN/miniapiserver" --etcd-servers "http://x" \\',
            '    --token "$T" ${LABELS:+--fake-node-labels "$LABELS"} \\',
            '    </dev/null >"$RUN/apiserver.log" 2>&1 &',
            'echo "--not-this"',
        ]
    )
    assert flags(invocation(script, "miniapiserver")) == {
        "--etcd-servers",
        "--token",
        "--fake-node-labels",
    }
    with pytest.raises(AssertionError, match="no longer runs etcd"):
        invocation(script, "etcd")
