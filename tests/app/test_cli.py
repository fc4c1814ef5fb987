"""The command line: fast help, exit code 2 for bad input before any request, no tracebacks."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k not in ("CI", "KUBECONFIG", "API_URL")}
    full.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        cwd=cwd,
        env=full,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def backend() -> Iterator[tuple[str, list[str]]]:
    """A loopback HTTP server that records every request it gets and answers 503."""
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(f"GET {self.path}")
            self.send_response(503)
            self.end_headers()

        do_POST = do_DELETE = do_GET

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    # shutdown() returns once the loop next looks at its flag: every poll_interval (0.5 s
    # by default, which was most of each test's time), here a few milliseconds.
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def test_version_and_help_do_not_load_the_heavy_clients(tmp_path: Path) -> None:
    out = run("--version", cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.startswith("orchestrator ")
    code = (
        "import sys; from orchestrator.cli import main\n"
        "try:\n    main(['run', '--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in\n"
        "    ('kubernetes_asyncio', 'aiohttp', 'xllamacpp', 'uvloop')]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run(
        [sys.executable, "-c", code], check=True, cwd=tmp_path, capture_output=True, timeout=60
    )
    # pydantic was 150 of --help's 174 ms: the top-level parser needs only the keys, not
    # the models (``run --help`` lists the sandbox's fault knobs, read from its model).
    for argv in (["--help"], ["--version"]):
        code = (
            "import sys; from orchestrator.cli import main\n"
            f"try:\n    main({argv!r})\nexcept SystemExit as e:\n    assert e.code == 0\n"
            "heavy = [m for m in sys.modules if m.split('.')[0] in\n"
            "    ('kubernetes_asyncio', 'aiohttp', 'xllamacpp', 'pydantic', 'httpx', 'rich',\n"
            "     'uvloop')]\n"
            "assert not heavy, heavy\n"
        )
        subprocess.run(
            [sys.executable, "-c", code], check=True, cwd=tmp_path, capture_output=True, timeout=60
        )


@pytest.mark.parametrize(
    "args, needle",
    [
        (
            ["--deployment-name", "../x"],
            "--deployment-name (command line): must be a DNS-1123 label",
        ),
        (["--deployment-name", "has space"], "--deployment-name (command line)"),
        (["--deployment-name", "a" * 64], "--deployment-name (command line)"),
        (["--namespace", "UPPER"], "--namespace (command line)"),
        (["--model", "../../etc/passwd"], "--model (command line): must be a catalog model id"),
        (
            ["--test-timeout", "ten minutes"],
            "--test-timeout (command line): must be a whole number of milliseconds",
        ),
        # URLs: scheme, host, port, no credentials, nothing a request would choke on.
        (["--inference", "http://a b"], "--inference (command line): must be a URL without"),
        (["--inference", "ftp://host"], "--inference (command line): must start with http"),
        (["--inference", "http://:80"], "--inference (command line): must name a host"),
        (["--inference", "http://[::1"], "--inference (command line): is not a valid URL"),
        (["--inference", "http://h:99999"], "--inference (command line): is not a valid URL"),
        (["--inference", "http://bad_host!/"], "--inference (command line): host"),
        (["--inference", "http://u:pw@host"], "--inference (command line): must not hold cred"),
        (["--inference", "http://host/v1?x=1"], "--inference (command line): must be a base URL"),
        # Numbers: positive, and within sane ranges.
        (["--test-timeout", "9" * 20], "--test-timeout (command line): Input should be less"),
        (["--poll-interval", "0"], "--poll-interval (command line): Input should be greater"),
        (["--latency-regression", "nan"], "--latency-regression (command line): Input should be"),
        (["--parallel", "1000"], "--parallel (command line): Input should be less"),
        (["--credential-timeout", "0"], "--credential-timeout (command line): Input should be"),
        # The environment's own flags.
        (["--backend-port", "70000"], "--backend-port (command line): must be a port"),
        (["--cluster-name", "Bad Name"], "--cluster-name (command line): must be a kind"),
        (["--backend-command", "bun 'run"], "--backend-command (command line): cannot be split"),
    ],
)
def test_hostile_input_is_rejected_before_any_request(
    tmp_path: Path, backend, args: list[str], needle: str
) -> None:
    url, seen = backend
    out = run("run", "--api-url", url, "--artifacts-dir", str(tmp_path / "a"), *args, cwd=tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    assert needle in out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    assert seen == []
    junit = (tmp_path / "a" / "junit.xml").read_text()
    assert "Configuration" in junit and needle.split(" (")[0] in junit
    assert '<property name="exit_code" value="2" />' in junit


@pytest.mark.parametrize(
    "value",
    ["zq7\nInjected: header", "zq7-nön-ascii", "zq7 has space", "zq7\there", "zq7" * 7_000],
    ids=["line-break", "non-ascii", "space", "tab", "too-long"],
)
@pytest.mark.parametrize("source", ["environment", "file"])
def test_a_token_that_is_not_header_safe_is_refused_without_showing_it(
    tmp_path: Path, backend, value: str, source: str
) -> None:
    url, seen = backend
    env, args = {}, []
    if source == "environment":
        env["KUBEFOUNDRY_TOKEN"] = value
        where = "KUBEFOUNDRY_TOKEN (environment)"
    else:
        token_file = tmp_path / "token"
        token_file.write_text(value)
        args = ["--token-file", str(token_file)]
        where = f"the token file {token_file} (--token-file (command line))"
    out = run(
        "run",
        "--api-url",
        url,
        "--artifacts-dir",
        str(tmp_path / "a"),
        *args,
        cwd=tmp_path,
        env=env,
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"{where}: may hold only visible ASCII" in out.stderr or "longer than" in out.stderr
    assert where in out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    assert seen == []
    for text in (out.stdout, out.stderr, (tmp_path / "a" / "junit.xml").read_text()):
        assert "zq7" not in text


def test_a_url_with_a_password_is_refused_without_showing_it(tmp_path: Path) -> None:
    out = run("run", "--api-url", "http://admin:hunter2-secret@host", cwd=tmp_path)
    assert out.returncode == 2
    assert "--api-url (command line): must not hold credentials" in out.stderr
    assert "hunter2-secret" not in out.stdout + out.stderr


def test_bad_env_and_config_file_name_the_source(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("test_timeout = 'soon'\nwat = 1\n")
    out = run("run", cwd=tmp_path)
    assert (
        out.returncode == 2 and "unknown key 'wat'" in out.stderr and "Traceback" not in out.stderr
    )
    (tmp_path / "config.toml").write_text("test_timeout = 'soon'\n")
    out = run("run", cwd=tmp_path, env={"DEPLOYMENT_READY_TIMEOUT": "-5"})
    assert out.returncode == 2
    assert "test_timeout (config.toml): must be a whole number of milliseconds" in out.stderr
    assert "DEPLOYMENT_READY_TIMEOUT (environment)" in out.stderr


def test_an_unknown_event_loop_is_a_usage_error_before_any_request(tmp_path: Path, backend) -> None:
    url, seen = backend
    out = run("run", "--api-url", url, cwd=tmp_path, env={"ORCHESTRATOR_EVENT_LOOP": "libuv"})
    assert out.returncode == 2, out.stdout + out.stderr
    assert "ORCHESTRATOR_EVENT_LOOP (environment): expected asyncio or uvloop" in out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    assert seen == []


def test_a_recheck_below_a_second_is_refused_before_any_request(tmp_path: Path) -> None:
    out = run("run", "--recheck-interval", "250", cwd=tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "--recheck-interval (command line): must be at least 1000 ms" in out.stderr
    assert "Traceback" not in out.stdout + out.stderr


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    out = run("run", "--no-such-flag", cwd=tmp_path)
    assert out.returncode == 2 and "unrecognized arguments" in out.stderr
    out = run("run", "--sandbox-fault", "never_ready=true", cwd=tmp_path)
    assert out.returncode == 2 and "--sandbox-fault needs --sandbox" in out.stderr


def test_a_missing_kubeconfig_is_a_configuration_error(tmp_path: Path, backend) -> None:
    url, seen = backend
    out = run(
        "run",
        "--api-url",
        url,
        "--kubeconfig",
        str(tmp_path / "nope.yaml"),
        "--artifacts-dir",
        str(tmp_path / "a"),
        cwd=tmp_path,
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert "kubeconfig" in out.stderr and "Traceback" not in out.stderr
    assert seen == []


def test_graph_prints_the_machine(tmp_path: Path) -> None:
    out = run("graph", cwd=tmp_path)
    assert out.returncode == 0
    assert out.stdout.startswith("stateDiagram-v2")
    for state in (
        "Install KAITO",
        "Wait Ready",
        "diagnose",
        "cleanup",
        "passed",
        "failed",
        "interrupted",
    ):
        assert state in out.stdout


def test_bad_sandbox_fault_is_a_configuration_error(tmp_path: Path) -> None:
    out = run(
        "run",
        "--sandbox",
        "--sandbox-fault",
        "watch_cut_after=-1",
        "--sandbox-fault",
        "nonsense=1",
        "--artifacts-dir",
        str(tmp_path / "a"),
        cwd=tmp_path,
    )
    assert out.returncode == 2, out.stderr
    assert (
        "--sandbox-fault watch_cut_after" in out.stderr and "--sandbox-fault nonsense" in out.stderr
    )
    assert "Traceback" not in out.stderr
