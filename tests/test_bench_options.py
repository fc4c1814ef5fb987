"""The reaction benchmark's choice of waiters: each one named, and what it was asked to do.

The benchmark itself runs outside the suite (minutes, on a quiet machine); what is tested
here is what decides which waiters it compares, since a waiter measured under the wrong
name, or two waiters under one, would make its table say something else than it measured.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from orchestrator.clients import WatchEvent

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench", ROOT / "benchmarks" / "bench.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ALL = ["orchestrator", "kubectl wait", "poll 2 s"]


def test_one_waiter_as_the_flows_run_it_keeps_its_plain_name(bench: ModuleType) -> None:
    assert bench.methods_for(None, ALL) == {
        "orchestrator": (None, "cache"),
        "kubectl wait": (None, "cache"),
        "poll 2 s": (None, "cache"),
    }


def test_each_confirming_read_is_a_waiter_of_its_own(bench: ModuleType) -> None:
    chosen = bench.methods_for(None, ["orchestrator", "kubectl wait"], ["cache", "quorum"])
    assert chosen == {
        "orchestrator (cache read)": (None, "cache"),
        "orchestrator (quorum read)": (None, "quorum"),
        "kubectl wait": (None, "cache"),
    }


def test_a_read_other_than_the_flows_own_is_never_shown_under_the_plain_name(
    bench: ModuleType,
) -> None:
    assert bench.methods_for(None, ["orchestrator"], ["quorum"]) == {
        "orchestrator (quorum read)": (None, "quorum")
    }


def test_loops_and_reads_combine_into_distinct_waiters(bench: ModuleType) -> None:
    chosen = bench.methods_for(["uvloop", "asyncio"], ["orchestrator"], ["cache", "quorum"])
    assert list(chosen) == [
        "orchestrator (uvloop, cache read)",
        "orchestrator (uvloop, quorum read)",
        "orchestrator (asyncio, cache read)",
        "orchestrator (asyncio, quorum read)",
    ]
    assert set(chosen.values()) == {
        (loop, read) for loop in ("uvloop", "asyncio") for read in ("cache", "quorum")
    }


def test_an_unknown_read_is_refused_with_the_known_ones(
    bench: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["bench.py", "--only", "reaction", "--confirm", "etcd"])
    with pytest.raises(SystemExit) as exit_:
        bench.main()
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--confirm: unknown etcd (cache, quorum)" in err


@pytest.fixture(scope="module")
def waiter() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_waiter", ROOT / "benchmarks" / "_waiter.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Kube:
    """Answers every read with the ready object, and keeps what each read asked for."""

    def __init__(self, obj: dict[str, Any]) -> None:
        self.obj = obj
        self.asked: list[str | None] = []

    async def get(
        self, res: Any, name: str, namespace: str | None = None, *, not_older_than: str | None
    ) -> dict[str, Any]:
        self.asked.append(not_older_than)
        return self.obj


class _Hub:
    """A stream that has already seen the object ready: its subscribers hear of it at once."""

    def __init__(self, obj: dict[str, Any]) -> None:
        self.obj = obj

    @contextmanager
    def listen(
        self,
        *args: Any,
        on_event: Callable[[WatchEvent], None],
        on_ready: Callable[[], None] | None = None,
        **kwargs: Any,
    ) -> Iterator[None]:
        on_event(WatchEvent("ADDED", self.obj))
        if on_ready is not None:
            on_ready()
        yield


@pytest.mark.anyio
@pytest.mark.parametrize(("confirm", "asked"), [("cache", "42"), ("quorum", None)])
async def test_the_waiter_confirms_with_the_read_it_is_asked_for(
    waiter: ModuleType, capsys: pytest.CaptureFixture[str], confirm: str, asked: str | None
) -> None:
    pod = {
        "metadata": {"name": "p", "namespace": "bench", "resourceVersion": "42"},
        "status": {"phase": "Running"},
    }
    kube = _Kube(pod)
    ask = {"method": "orchestrator", "kind": "pod", "name": "p", "confirm": confirm}
    await waiter.one(kube, _Hub(pod), "bench", ask)
    assert kube.asked == [asked]
    assert capsys.readouterr().out.startswith("done p ")


@pytest.mark.anyio
async def test_a_request_without_a_read_confirms_as_the_flows_do(
    waiter: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    pod = {
        "metadata": {"name": "p", "namespace": "bench", "resourceVersion": "7"},
        "status": {"phase": "Running"},
    }
    kube = _Kube(pod)
    await waiter.one(
        kube, _Hub(pod), "bench", {"method": "orchestrator", "kind": "pod", "name": "p"}
    )
    assert kube.asked == ["7"]


def test_the_p99_is_named_as_the_sample_it_is(bench: ModuleType) -> None:
    assert bench._p99_rank_words({"orchestrator": 200, "poll 2 s": 50}) == (
        "3rd largest of 200, largest of 50"
    )
    assert bench._p99_rank_words({"orchestrator": 100}) == "2nd largest of 100"


def test_each_gap_is_given_with_an_interval_that_tells_a_real_gap_from_luck(
    bench: ModuleType,
) -> None:
    import random

    rng = random.Random(3)
    theirs = [rng.gauss(4.0, 1.0) for _ in range(200)]
    same = theirs[::-1]  # the same samples, in another order
    slower = [x + 5.0 for x in same]
    got = bench.gaps(
        {
            "orchestrator": same,
            "orchestrator (late)": slower,
            "kubectl wait": theirs,
            "poll 2 s": slower,
        },
        seed=1,
    )
    assert set(got) == {"orchestrator", "orchestrator (late)"}
    for q in ("p50", "p99"):
        low, high = got["orchestrator"][q]["interval_95_ms"]
        assert low < 0 < high  # the same samples: the run cannot tell them apart
        late = got["orchestrator (late)"][q]
        low, high = late["interval_95_ms"]
        assert 0 < low <= late["gap_ms"] <= high
    assert bench.gaps({"orchestrator": same}, seed=1) == {}


def test_results_written_before_per_waiter_counts_still_make_a_table(bench: ModuleType) -> None:
    s = {"n": 50, "p50_ms": 1.0, "p90_ms": 2.0, "p99_ms": 3.0, "max_ms": 3.0, "mean_ms": 1.5}
    old = {
        "reaction": {
            "trials_per_method": 50,
            "load_before": [0.1],
            "load_after": [0.2],
            "results": {"pod": {"orchestrator": s, "kubectl wait": s}},
        }
    }
    text = bench.table(old)
    assert "largest of 50" in text
    assert "| pod phase | orchestrator | 50 | 1.0 | 2.0 | 3.0 | 3.0 |" in text
    assert "not ahead of `kubectl wait` (p50 +0.0 ms, p99 +0.0 ms)." in text
