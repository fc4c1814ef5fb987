"""Secrets never leave the process: one redactor in front of every sink.

A backend that echoes the request's Authorization header in every error body (the
sandbox's ``echo_authorization``) puts the token into reasons, retry notes, the
diagnostics and the exchanges they quote. Whatever the peer echoed, neither the token
nor a ``Bearer`` credential may reach the console, junit.xml, run.json, the
diagnostics, the GitHub summary or its annotations.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from _bounded import running_sandbox
from e2e_harness import Result, run_orchestrator

from orchestrator.engine import Redactor
from orchestrator.sandbox import Faults, SandboxOptions

pytestmark = [pytest.mark.anyio, pytest.mark.cluster]

TOKEN = "tok-9b-5e1f0c7a-never-in-a-report"
WRONG = "wrong-4d2b9e-also-secret"
BEARER = re.compile(r"(?i)bearer\s+(?!\*\*\*|tokens?\b)[A-Za-z0-9]")


@pytest.fixture
async def echoing(kubeconfig, tmp_path: Path):
    faults = Faults(echo_authorization=True, stub_models=True)
    options = SandboxOptions(
        workdir=tmp_path / "sb", kubeconfig=kubeconfig, auth_token=TOKEN, faults=faults
    )
    async with running_sandbox(options) as sb:
        yield sb


def everything_written(result: Result) -> dict[str, str]:
    texts = {"stdout": result.stdout, "stderr": result.stderr}
    for path in sorted(result.artifacts.rglob("*")):
        if path.is_file():
            texts[str(path.relative_to(result.artifacts))] = path.read_text(errors="replace")
    return texts


def assert_no_secret(result: Result, *secrets: str) -> None:
    texts = everything_written(result)
    assert len(texts) > 4, sorted(texts)  # reports and diagnostics were written
    for name, text in texts.items():
        for secret in secrets:
            assert secret not in text, f"a secret leaked into {name}"
        assert not BEARER.search(text), f"a bearer credential leaked into {name}"


async def test_a_wrong_token_echoed_in_a_401_reaches_no_sink(echoing, tmp_path: Path) -> None:
    summary = tmp_path / "summary.md"
    result = await run_orchestrator(
        echoing,
        tmp_path,
        env={
            "KUBEFOUNDRY_TOKEN": WRONG,
            "GITHUB_ACTIONS": "true",
            "GITHUB_STEP_SUMMARY": str(summary),
        },
    )
    assert result.code == 1, result.stdout + result.stderr
    assert "401" in result.status_of("Install KAITO")["message"]
    assert [n for n, t in everything_written(result).items() if "Bearer ***" in t]
    assert "::error" in result.stdout
    assert_no_secret(result, WRONG, TOKEN)
    assert WRONG not in summary.read_text() and not BEARER.search(summary.read_text())


async def test_the_right_token_echoed_in_errors_retries_and_diagnostics_reaches_no_sink(
    echoing, tmp_path: Path
) -> None:
    # Two 503s (each retried, and the retry notes quote the body), then a deployment
    # whose model is not in the catalog: its 404 fails Deploy and the diagnostics run.
    echoing.update_faults({"backend_errors": 2})
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    result = await run_orchestrator(
        echoing, tmp_path, "--model", "nope:1b", "--token-file", str(token_file)
    )
    assert result.code == 1, result.stdout + result.stderr
    assert "not in the backend's catalog" in result.status_of("Deploy nope:1b")["message"]
    # The echoes did reach the reports, masked: the retry notes and the diagnostics.
    masked = [n for n, t in everything_written(result).items() if "Bearer ***" in t]
    assert masked, "the peer's echo was never seen: the test proves nothing"
    assert (result.artifacts / "diagnostics").is_dir()
    assert_no_secret(result, TOKEN)


def test_the_redactor_masks_secrets_however_they_are_split_or_encoded() -> None:
    r = Redactor([TOKEN])
    styled = "tok-9b-\x1b[1m5e1f0c7a\x1b[0m-never-in\n    -a-report"
    assert r(f"x {TOKEN} y") == "x *** y"
    assert r(styled) == "***"
    assert r("a%20" + TOKEN.replace("-", "-")) == "a%20***"
    assert r('{"authorization": "Bearer abc.DEF-123"}') == '{"authorization": "Bearer ***"}'
    assert r("Authorization: Basic dXNlcjpwYXNz") == "Authorization: Basic ***"
    assert r("proxy-authorization=zzz&x=1") == "proxy-authorization=***&x=1"
    assert r("bearer%20zzzzzzzz") == "bearer%20***"
    # Plain words are not credentials.
    text = "check the bearer token (KUBEFOUNDRY_TOKEN or token_file)"
    assert r(text) == text
    # A value too short to be a secret is not masked everywhere.
    r.add("abc")
    assert r("abc") == "abc"
