"""Configuration: precedence, units, and a clear message naming key and source."""

from pathlib import Path

import pytest

from orchestrator.config import ConfigError, load_settings


def test_defaults_are_the_plans(tmp_path: Path) -> None:
    s = load_settings({}, environ={}, cwd=tmp_path)
    assert s.api_url == "http://localhost:3001"
    assert s.test_timeout == 600_000
    assert s.install_timeout == 180_000
    assert s.deployment_ready_timeout == 300_000
    # The model and namespace are the provider's unless configured (KAITO's: the plan's).
    assert s.model is None and s.namespace is None
    assert s.flow_names() == ["kaito"]
    assert s.deployment_name == "integration-test-llama"
    assert s.artifacts_dir == "test-results"
    assert s.seconds("test_timeout") == 600.0


def test_precedence_flags_over_env_over_file(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(
        'test_timeout = 1000\nnamespace = "from-file"\ndeployment_name = "file-name"\n'
    )
    env = {"TEST_TIMEOUT": "2000", "ORCHESTRATOR_NAMESPACE": "from-env"}
    s = load_settings({"test_timeout": "3000"}, environ=env, cwd=tmp_path)
    assert s.test_timeout == 3000
    assert s.namespace == "from-env"
    assert s.deployment_name == "file-name"


def test_shipped_config_file_matches_defaults() -> None:
    root = Path(__file__).resolve().parents[2]
    assert load_settings({}, environ={}, cwd=root) == load_settings(
        {}, environ={}, cwd=root / "tests"
    )


@pytest.mark.parametrize(
    "env, needle",
    [
        (
            {"TEST_TIMEOUT": "soon"},
            "TEST_TIMEOUT (environment): must be a whole number of milliseconds; got 'soon'",
        ),
        (
            {"TEST_TIMEOUT": "1.5"},
            "TEST_TIMEOUT (environment): must be a whole number of milliseconds",
        ),
        ({"TEST_TIMEOUT": "0"}, "TEST_TIMEOUT (environment): Input should be greater than 0"),
        (
            {"API_URL": "localhost:3001"},
            "API_URL (environment): must start with http:// or https://",
        ),
        (
            {"ORCHESTRATOR_CLEANUP": "sometimes"},
            "ORCHESTRATOR_CLEANUP (environment): Input should be",
        ),
        (
            {"ORCHESTRATOR_INFERENCE": "carrier-pigeon"},
            "ORCHESTRATOR_INFERENCE (environment): must be",
        ),
        (
            {"ORCHESTRATOR_INFERENCE_EXPECT": "(paris"},
            "ORCHESTRATOR_INFERENCE_EXPECT (environment): must be a regular expression "
            "(Python re syntax): missing ), unterminated subpattern at position 0",
        ),
    ],
)
def test_bad_environment_values_name_key_and_source(tmp_path: Path, env: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings({}, environ=env, cwd=tmp_path)
    assert needle in str(err.value)


@pytest.mark.parametrize(
    "name", ["../x", "has space", "x" * 64, "UpperCase", "-lead", "trail-", ""]
)
def test_hostile_names_are_rejected(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings({"deployment_name": name}, environ={}, cwd=tmp_path)
    assert "--deployment-name (command line): must be a DNS-1123 label" in str(err.value)


def test_a_63_character_name_is_fine(tmp_path: Path) -> None:
    assert (
        load_settings({"deployment_name": "a" * 63}, environ={}, cwd=tmp_path).deployment_name
        == "a" * 63
    )


@pytest.mark.parametrize(
    "text, needle",
    [
        ("test_timeout = ", "config.toml: not valid TOML"),
        ("colour = 'blue'\n", "config.toml: unknown key 'colour'"),
        (
            "test_timeout = 'ten'\n",
            "test_timeout (config.toml): must be a whole number of milliseconds",
        ),
        (
            "test_timeout = true\n",
            "test_timeout (config.toml): must be a whole number of milliseconds",
        ),
        ("namespace = ['a']\n", "namespace (config.toml): must be a single value"),
        ("token = 'x'\n", "'token' may not be written in a file"),
    ],
)
def test_bad_config_file(tmp_path: Path, text: str, needle: str) -> None:
    (tmp_path / "config.toml").write_text(text)
    with pytest.raises(ConfigError) as err:
        load_settings({}, environ={}, cwd=tmp_path)
    assert needle in str(err.value)


def test_default_reserve_scales_with_a_small_budget(tmp_path: Path) -> None:
    s = load_settings({"test_timeout": "20000"}, environ={}, cwd=tmp_path)
    assert s.seconds("cleanup_reserve") == 5.0
    assert load_settings({}, environ={}, cwd=tmp_path).seconds("cleanup_reserve") == 60.0


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(
            {"namespace": "Bad"}, environ={"TEST_TIMEOUT": "x", "API_URL": "nope"}, cwd=tmp_path
        )
    assert len(err.value.problems) == 3


def test_explicit_config_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="configuration file not found"):
        load_settings({}, environ={}, config_file=str(tmp_path / "missing.toml"))


def test_reserve_must_leave_room_for_phases(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match="--cleanup-reserve \\(command line\\): must be less than test_timeout"
    ):
        load_settings({"test_timeout": "1000", "cleanup_reserve": "1000"}, environ={}, cwd=tmp_path)


def test_token_from_env_or_file_and_never_shown(tmp_path: Path) -> None:
    s = load_settings({}, environ={"KUBEFOUNDRY_TOKEN": "s3cret-value"}, cwd=tmp_path)
    assert s.token is not None and s.token.get_secret_value() == "s3cret-value"
    assert "s3cret-value" not in repr(s) and "s3cret-value" not in str(s.public())
    tok = tmp_path / "tok"
    tok.write_text("from-file\n")
    s = load_settings({"token_file": str(tok)}, environ={}, cwd=tmp_path)
    assert s.token is not None and s.token.get_secret_value() == "from-file"


def test_unreadable_token_file(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match="--token-file \\(command line\\): cannot read the token file"
    ):
        load_settings({"token_file": str(tmp_path / "nope")}, environ={}, cwd=tmp_path)


@pytest.mark.parametrize(
    "ci, expected",
    [
        ("true", "always"),
        ("1", "always"),
        ("", "on-success"),
        (None, "on-success"),
        ("false", "on-success"),
    ],
)
def test_auto_cleanup_follows_ci(tmp_path: Path, ci: str | None, expected: str) -> None:
    s = load_settings({}, environ={}, cwd=tmp_path)
    env = {} if ci is None else {"CI": ci}
    assert s.cleanup_policy(env) == expected
    assert (
        load_settings({"cleanup": "never"}, environ={}, cwd=tmp_path).cleanup_policy({"CI": "1"})
        == "never"
    )


def test_one_deployment_keeps_the_plans_name_unless_asked(tmp_path: Path) -> None:
    s = load_settings({}, environ={}, cwd=tmp_path)
    assert [t.name for t in s.targets("ab12c")] == ["integration-test-llama"]
    s = load_settings({"unique_names": "true"}, environ={}, cwd=tmp_path)
    assert [t.name for t in s.targets("ab12c")] == ["integration-test-llama-ab12c"]


def test_parallel_copies_get_unique_names(tmp_path: Path) -> None:
    s = load_settings({"parallel": "3"}, environ={}, cwd=tmp_path)
    targets = s.targets("ab12c")
    assert [t.name for t in targets] == [f"integration-test-llama-ab12c-{i}" for i in (1, 2, 3)]
    assert {t.model for t in targets} == {None}  # the provider's default model


def test_deployments_from_the_file_and_flags(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(
        '[[deployments]]\nname = "small"\n\n[[deployments]]\nname = "two"\nreplicas = 2\nnamespace = "other"\n'
    )
    s = load_settings({}, environ={}, cwd=tmp_path)
    got = [(t.name, t.namespace, t.replicas) for t in s.targets("r1")]
    assert got == [("small-r1", None, 1), ("two-r1", "other", 2)]
    s = load_settings(
        {"deployments": ["name=a,model=llama3.2:1b", "name=b"]}, environ={}, cwd=tmp_path
    )
    assert [t.name for t in s.targets("r2")] == ["a-r2", "b-r2"]


def test_a_long_name_stays_a_valid_label_with_its_suffix(tmp_path: Path) -> None:
    s = load_settings(
        {"deployment_name": "a" * 63, "unique_names": "true"}, environ={}, cwd=tmp_path
    )
    (target,) = s.targets("zz9zz")
    assert len(target.name) <= 63 and target.name.endswith("-zz9zz")


@pytest.mark.parametrize(
    "text, needle",
    [
        (
            '[[deployments]]\nname = "Bad_Name"\n',
            "deployments[0].name (config.toml): must be a DNS-1123 label",
        ),
        ("[[deployments]]\nreplicas = 0\n", "deployments[0].replicas (config.toml)"),
        ('[[deployments]]\ncolour = "red"\n', "deployments[0].colour (config.toml)"),
        (
            '[[deployments]]\nname = "a"\n[[deployments]]\nname = "a"\n',
            "the name 'a-x' appears twice",
        ),
        ("deployments = 3\n", "deployments (config.toml): must be [[deployments]] tables"),
    ],
)
def test_bad_deployments(tmp_path: Path, text: str, needle: str) -> None:
    (tmp_path / "config.toml").write_text(text)
    with pytest.raises(ConfigError) as err:
        load_settings({}, environ={}, cwd=tmp_path)
    assert needle in str(err.value)


def test_wait_strategy_and_booleans(tmp_path: Path) -> None:
    s = load_settings(
        {"wait_strategy": "poll", "chaos": "true"},
        environ={"ORCHESTRATOR_POLL_INTERVAL": "250"},
        cwd=tmp_path,
    )
    assert (s.wait_strategy, s.poll_interval, s.chaos) == ("poll", 250, True)
    with pytest.raises(
        ConfigError, match="ORCHESTRATOR_CHAOS \\(environment\\): must be true or false"
    ):
        load_settings({}, environ={"ORCHESTRATOR_CHAOS": "maybe"}, cwd=tmp_path)
    with pytest.raises(ConfigError, match="--wait-strategy"):
        load_settings({"wait_strategy": "sometimes"}, environ={}, cwd=tmp_path)


def test_the_inference_expectation_is_off_by_default_and_set_by_file_env_or_flag(
    tmp_path: Path,
) -> None:
    settings = load_settings({}, environ={}, cwd=tmp_path)
    assert settings.inference_expect is None and "France" in settings.inference_expect_prompt
    (tmp_path / "config.toml").write_text('inference_expect = "(?i)paris"\n')
    assert load_settings({}, environ={}, cwd=tmp_path).inference_expect == "(?i)paris"
    env = {"ORCHESTRATOR_INFERENCE_EXPECT": "Paris", "ORCHESTRATOR_INFERENCE_EXPECT_PROMPT": "Q?"}
    settings = load_settings({}, environ=env, cwd=tmp_path)
    assert (settings.inference_expect, settings.inference_expect_prompt) == ("Paris", "Q?")
    flags = {"inference_expect": r"\bLyon\b"}
    assert load_settings(flags, environ=env, cwd=tmp_path).inference_expect == r"\bLyon\b"


def test_the_plans_names_for_the_model_and_install_timeout_still_work(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('test_model = "phi"\nkaito_install_timeout = 5000\n')
    s = load_settings({}, environ={}, cwd=tmp_path)
    assert (s.model, s.install_timeout) == ("phi", 5000)
    s = load_settings(
        {}, environ={"KAITO_INSTALL_TIMEOUT": "7000", "TEST_MODEL": "m"}, cwd=tmp_path
    )
    assert (s.model, s.install_timeout) == ("m", 7000)


def test_provider_flow_and_provider_tables(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(
        'provider = "kaito,kuberay"\n\n[kuberay]\nnamespace = "kuberay-system"\nmodel = "x/y"\n'
    )
    s = load_settings({}, environ={}, cwd=tmp_path)
    assert s.flow_names() == ["kaito", "kuberay"]
    assert s.flow_options == {"kuberay": {"namespace": "kuberay-system", "model": "x/y"}}
    s = load_settings({"flow": "mypkg.flows:make"}, environ={}, cwd=tmp_path)
    assert s.flow_names() == ["mypkg.flows:make"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('provider = "Kaito!"', "provider (config.toml): 'Kaito!' is not a flow name"),
        ('provider = "a,a"', "provider (config.toml): names a flow twice"),
        ("[kaito]\nx = [1]", "[kaito].x (config.toml): must be a single value, not a list"),
        ('["Bad Name"]\nx = 1', "unknown key 'Bad Name'"),
    ],
)
def test_bad_flow_names_and_tables_are_named(tmp_path: Path, text: str, expected: str) -> None:
    (tmp_path / "config.toml").write_text(text + "\n")
    with pytest.raises(ConfigError) as err:
        load_settings({}, environ={}, cwd=tmp_path)
    assert any(expected in p for p in err.value.problems), err.value.problems


def test_the_safety_recheck_is_30_s_unless_a_file_env_or_flag_says_otherwise(
    tmp_path: Path,
) -> None:
    assert load_settings({}, environ={}, cwd=tmp_path).seconds("recheck_interval") == 30.0
    (tmp_path / "config.toml").write_text("recheck_interval = 10000\n")
    assert load_settings({}, environ={}, cwd=tmp_path).recheck_interval == 10_000
    env = {"ORCHESTRATOR_RECHECK_INTERVAL": "5000"}
    assert load_settings({}, environ=env, cwd=tmp_path).recheck_interval == 5_000
    flags = {"recheck_interval": "1000"}
    assert load_settings(flags, environ=env, cwd=tmp_path).recheck_interval == 1_000


def test_the_wait_for_a_backend_outlasts_a_restart_unless_an_env_or_flag_says_otherwise(
    tmp_path: Path,
) -> None:
    # A real backend restart takes about 7 s: the default wait for a silent API_URL is
    # longer. The CLI test of "no backend" (test_messages.py) sets a shorter one.
    assert load_settings({}, environ={}, cwd=tmp_path).seconds("backend_wait") == 10.0
    env = {"ORCHESTRATOR_BACKEND_WAIT": "20000"}
    assert load_settings({}, environ=env, cwd=tmp_path).seconds("backend_wait") == 20.0
    flags = {"backend_wait": "500"}
    assert load_settings(flags, environ=env, cwd=tmp_path).seconds("backend_wait") == 0.5
    with pytest.raises(ConfigError) as err:
        load_settings({"backend_wait": "0"}, environ={}, cwd=tmp_path)
    assert any("--backend-wait (command line)" in p for p in err.value.problems)


@pytest.mark.parametrize(
    "source, needle",
    [
        (
            {"flags": {"recheck_interval": "999"}},
            "--recheck-interval (command line): must be at least 1000 ms: it is a safety "
            "net, not a poll (to ask the backend that often, set wait_strategy to poll); "
            "got '999'",
        ),
        (
            {"environ": {"ORCHESTRATOR_RECHECK_INTERVAL": "30s"}},
            "ORCHESTRATOR_RECHECK_INTERVAL (environment): must be a whole number of "
            "milliseconds; got '30s'",
        ),
        (
            {"toml": "recheck_interval = 2.5\n"},
            "recheck_interval (config.toml): must be a whole number of milliseconds",
        ),
        (
            {"flags": {"recheck_interval": "3600001"}},
            "--recheck-interval (command line): must be at most 3600000 ms",
        ),
    ],
)
def test_a_bad_recheck_is_named_with_its_source(tmp_path: Path, source: dict, needle: str) -> None:
    if "toml" in source:
        (tmp_path / "config.toml").write_text(source["toml"])
    with pytest.raises(ConfigError) as err:
        load_settings(source.get("flags", {}), environ=source.get("environ", {}), cwd=tmp_path)
    assert needle in str(err.value)
