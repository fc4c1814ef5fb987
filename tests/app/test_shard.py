"""``--shard INDEX/COUNT``: every deployment runs in exactly one job, in its order."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator._shard import parse_shard, select_shard


@pytest.mark.parametrize("text,expected", [("1/1", (1, 1)), (" 2 / 3 ", (2, 3))])
def test_parses_index_and_count(text: str, expected: tuple[int, int]) -> None:
    assert parse_shard(text) == expected


@pytest.mark.parametrize(
    "text,why",
    [
        ("0/2", "INDEX must be between 1"),
        ("3/2", "INDEX must be"),
        ("1/0", "COUNT must"),
        ("x", "not INDEX/COUNT"),
        ("1/", "not INDEX/COUNT"),
        ("-1/2", "not INDEX/COUNT"),
    ],
)
def test_refuses_what_is_not_a_shard(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_shard(text)


@settings(deadline=None)  # no per-example wall-clock limit: a loaded machine is slow
@given(st.lists(st.integers(), max_size=40), st.integers(min_value=1, max_value=12))
def test_shards_partition_the_list(items: list[int], count: int) -> None:
    shards = [select_shard(items, i, count) for i in range(1, count + 1)]
    assert sorted(x for shard in shards for x in shard) == sorted(items)
    assert sum(len(shard) for shard in shards) == len(items)
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    for shard in shards:  # each keeps the configuration's order
        assert shard == [x for x in items if x in shard][: len(shard)] or len(set(items)) < len(
            items
        )


def test_round_robin_mixes_providers() -> None:
    items = ["kaito", "kuberay", "dynamo", "kaito-2", "kuberay-2", "dynamo-2"]
    assert select_shard(items, 1, 2) == ["kaito", "dynamo", "kuberay-2"]
    assert select_shard(items, 2, 2) == ["kuberay", "kaito-2", "dynamo-2"]
