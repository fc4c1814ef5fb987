"""The configuration's keys (file, environment, flag) and its error: no pydantic here.

The command line builds its parser from these, so ``--help`` and ``--version`` answer
without importing the validation models (pydantic alone is most of their time).
"""

from __future__ import annotations

from typing import NamedTuple


class Key(NamedTuple):  # not a dataclass: importing dataclasses costs --help ~10 ms
    """One setting: its name in ``config.toml``, its environment variable and its flag."""

    name: str
    env: str | None
    flag: str | None
    help: str


KEYS: tuple[Key, ...] = (
    Key("api_url", "API_URL", "--api-url", "KubeFoundry backend URL"),
    Key("test_timeout", "TEST_TIMEOUT", "--test-timeout", "budget for the whole run, ms"),
    Key(
        "provider",
        "ORCHESTRATOR_PROVIDER",
        "--provider",
        "the KubeFoundry provider(s) to test, comma-separated: kaito (default), kuberay, dynamo",
    ),
    Key(
        "flow",
        "ORCHESTRATOR_FLOW",
        "--flow",
        "run these flows instead, comma-separated: installed names (see `orchestrator flows`) "
        "or module:factory paths",
    ),
    Key(
        "install_timeout",
        "KAITO_INSTALL_TIMEOUT",
        "--install-timeout",
        "Install phase timeout, ms",
    ),
    Key("deploy_timeout", "DEPLOY_TIMEOUT", "--deploy-timeout", "Deploy phase timeout, ms"),
    Key(
        "deployment_ready_timeout",
        "DEPLOYMENT_READY_TIMEOUT",
        "--deployment-ready-timeout",
        "Wait Ready phase timeout, ms",
    ),
    Key(
        "inference_timeout",
        "INFERENCE_TIMEOUT",
        "--inference-timeout",
        "Inference phase timeout, ms",
    ),
    Key("delete_timeout", "DELETE_TIMEOUT", "--delete-timeout", "Delete phase timeout, ms"),
    Key(
        "cleanup_reserve",
        "ORCHESTRATOR_CLEANUP_RESERVE",
        "--cleanup-reserve",
        "part of the budget kept for diagnostics and cleanup, ms",
    ),
    Key("model", "TEST_MODEL", "--model", "model to deploy (default: the provider's)"),
    Key("kubeconfig", "KUBECONFIG", "--kubeconfig", "kubeconfig file"),
    Key(
        "namespace",
        "ORCHESTRATOR_NAMESPACE",
        "--namespace",
        "deployment namespace (default: the provider's)",
    ),
    Key("deployment_name", "ORCHESTRATOR_DEPLOYMENT_NAME", "--deployment-name", "deployment name"),
    Key(
        "artifacts_dir",
        "ORCHESTRATOR_ARTIFACTS_DIR",
        "--artifacts-dir",
        "where reports and diagnostics go",
    ),
    Key(
        "token_file",
        "KUBEFOUNDRY_TOKEN_FILE",
        "--token-file",
        "file holding the backend's bearer token",
    ),
    Key(
        "inference",
        "ORCHESTRATOR_INFERENCE",
        "--inference",
        "how to reach the model: service-proxy, backend-proxy, or a base URL",
    ),
    Key("cleanup", "ORCHESTRATOR_CLEANUP", "--cleanup", "auto, always, on-success or never"),
    Key(
        "wait_strategy",
        "ORCHESTRATOR_WAIT_STRATEGY",
        "--wait-strategy",
        "watch (react to watch events) or poll (ask every poll_interval)",
    ),
    Key(
        "recheck_interval",
        "ORCHESTRATOR_RECHECK_INTERVAL",
        "--recheck-interval",
        "while watching, ask KubeFoundry again after this long without a watch event: the "
        "safety net for a stalled watch or a change no Kubernetes object shows, ms "
        "(at least 1000)",
    ),
    Key(
        "backend_wait",
        "ORCHESTRATOR_BACKEND_WAIT",
        "--backend-wait",
        "how long nothing may listen at API_URL before the run gives up (a backend restart "
        "takes about 7 s), ms",
    ),
    Key(
        "credential_timeout",
        "ORCHESTRATOR_CREDENTIAL_TIMEOUT",
        "--credential-timeout",
        "time a kubeconfig credential plugin (users[].user.exec) may take, ms",
    ),
    Key(
        "poll_interval",
        "ORCHESTRATOR_POLL_INTERVAL",
        "--poll-interval",
        "re-check interval for --wait-strategy poll, ms",
    ),
    Key(
        "parallel",
        "ORCHESTRATOR_PARALLEL",
        "--parallel",
        "run N copies of the deployment at once (names made unique)",
    ),
    Key(
        "unique_names",
        "ORCHESTRATOR_UNIQUE_NAMES",
        "--unique-names",
        "suffix deployment names with the run id (always on for several deployments)",
    ),
    Key(
        "latency_regression",
        "ORCHESTRATOR_LATENCY_REGRESSION",
        "--latency-regression",
        "fail Inference when latency exceeds the history's median by more than this percent",
    ),
    Key(
        "inference_expect",
        "ORCHESTRATOR_INFERENCE_EXPECT",
        "--inference-expect",
        "a regular expression that the answer to inference_expect_prompt, asked at "
        "temperature 0, must match (unset: no such check)",
    ),
    Key(
        "inference_expect_prompt",
        "ORCHESTRATOR_INFERENCE_EXPECT_PROMPT",
        "--inference-expect-prompt",
        "the deterministic prompt inference_expect judges",
    ),
    Key(
        "chaos",
        "ORCHESTRATOR_CHAOS",
        "--chaos",
        "after Wait Ready, delete the model pod and check a new one serves (true/false)",
    ),
    Key(
        "deployments",
        None,
        "--deployment",
        "several deployments: name=..,model=..,namespace=..,replicas=..,provider=.. (repeatable)",
    ),
    Key(
        "shard",
        "ORCHESTRATOR_SHARD",
        "--shard",
        "INDEX/COUNT: run only this part of the deployments (one CI job of COUNT)",
    ),
    Key(
        "strict",
        "ORCHESTRATOR_STRICT",
        "--strict",
        "a finding (the backend contradicting the cluster) fails its phase (true/false)",
    ),
)
KEYS_BY_NAME = {k.name: k for k in KEYS}
#: Names a key had before the flow became provider-neutral: still read from files.
KEY_ALIASES = {"test_model": "model", "kaito_install_timeout": "install_timeout"}
BOOLEAN_KEYS = frozenset({"unique_names", "chaos", "strict"})
TOKEN_ENV = "KUBEFOUNDRY_TOKEN"
CONFIG_ENV = "ORCHESTRATOR_CONFIG"
DEFAULT_CONFIG_FILE = "config.toml"


class ConfigError(Exception):
    """Invalid configuration. ``problems`` holds one line per bad value."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


__all__ = [
    "BOOLEAN_KEYS",
    "CONFIG_ENV",
    "DEFAULT_CONFIG_FILE",
    "KEYS",
    "KEYS_BY_NAME",
    "KEY_ALIASES",
    "TOKEN_ENV",
    "ConfigError",
    "Key",
]
