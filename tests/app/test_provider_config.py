"""Configuration for several providers: per-deployment providers, shards, --strict, HF ids."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.config import ConfigError, load_settings


def settings(tmp_path: Path, toml: str = "", **flags: str):  # type: ignore[no-untyped-def]
    if toml:
        (tmp_path / "config.toml").write_text(toml)
    return load_settings(flags, environ={}, cwd=tmp_path)


def test_a_deployment_without_a_provider_is_made_once_per_provider(tmp_path: Path) -> None:
    s = settings(tmp_path, provider="kaito,kuberay,dynamo")
    assert s.flow_names() == ["kaito", "kuberay", "dynamo"]
    assert [(t.name, t.provider) for t in s.targets("r1")] == [
        ("integration-test-llama", "kaito"),
        ("integration-test-llama", "kuberay"),
        ("integration-test-llama", "dynamo"),
    ]


def test_deployments_that_name_a_provider_choose_the_flows(tmp_path: Path) -> None:
    s = settings(
        tmp_path,
        '[[deployments]]\nname = "a"\nprovider = "kuberay"\n\n'
        '[[deployments]]\nname = "b"\nprovider = "dynamo"\nmodel = "Qwen/Qwen2.5-0.5B"\n',
    )
    assert s.flow_names() == ["kuberay", "dynamo"]
    targets = s.targets("r1")
    assert [(t.name, t.provider, t.model) for t in targets] == [
        ("a-r1", "kuberay", None),
        ("b-r1", "dynamo", "Qwen/Qwen2.5-0.5B"),
    ]


def test_a_shard_is_a_part_of_the_whole_run(tmp_path: Path) -> None:
    whole = settings(tmp_path, provider="kaito,kuberay,dynamo").targets("r")
    parts = [
        settings(tmp_path, provider="kaito,kuberay,dynamo", shard=f"{i}/2").targets("r")
        for i in (1, 2)
    ]
    assert sorted(parts[0] + parts[1], key=whole.index) == whole
    assert [t.provider for t in parts[0]] == ["kaito", "dynamo"]
    assert settings(tmp_path, provider="kuberay", shard="2/2").targets("r") == []


@pytest.mark.parametrize(
    "flags,problem",
    [
        ({"shard": "0/3"}, "--shard (command line): '0/3': INDEX must be between 1 and COUNT"),
        ({"strict": "maybe"}, "--strict (command line): must be true or false"),
        ({"model": "a/b/c"}, "--model (command line): must be a catalog model id"),
    ],
)
def test_bad_values_are_named(tmp_path: Path, flags: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings(tmp_path, **flags)
    assert any(p.startswith(problem) for p in caught.value.problems), caught.value.problems


def test_strict_and_hugging_face_ids(tmp_path: Path) -> None:
    s = settings(tmp_path, strict="true", model="Qwen/Qwen2.5-0.5B-Instruct")
    assert s.strict is True and s.model == "Qwen/Qwen2.5-0.5B-Instruct"
