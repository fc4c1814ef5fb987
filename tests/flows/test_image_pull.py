"""The image pull the kubelet reported: its own figure, else Pulling -> Pulled, else present."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.flows._pull import ImagePull, go_duration, image_pulls, summary

IMAGE = "ghcr.io/kaito-project/aikit/llama3.2:1b"
POD = "integration-test-llama-0"


def event(reason: str, message: str, at: str, pod: str = POD) -> dict[str, Any]:
    return {
        "reason": reason,
        "message": message,
        "involvedObject": {"kind": "Pod", "name": pod},
        "lastTimestamp": at,
    }


@pytest.mark.parametrize(
    "text, seconds",
    [("2m54.321s", 174.321), ("312ms", 0.312), ("1h0m1s", 3601.0), ("850us", 0.00085)],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "3", "2m54.3", "1d"])
def test_not_go_durations(text: str) -> None:
    assert go_duration(text) is None


def test_the_kubelets_own_figure_is_taken() -> None:
    events = [
        event("Pulling", f'Pulling image "{IMAGE}"', "2026-11-30T05:00:00Z"),
        event(
            "Pulled",
            f'Successfully pulled image "{IMAGE}" in 2m54.321s (2m54.321s including waiting). '
            "Image size: 1325400000 bytes.",
            "2026-11-30T05:02:55Z",
        ),
    ]
    assert image_pulls(events, {POD}) == [ImagePull(POD, IMAGE, "pulled", pytest.approx(174.321))]
    assert summary(image_pulls(events, {POD})) == {
        "image_pull": "pulled",
        "image": IMAGE,
        "image_pull_seconds": "174.3",
    }


def test_without_a_figure_the_time_from_pulling_to_pulled_is_taken() -> None:
    events = [
        event("Pulled", f'Successfully pulled image "{IMAGE}" in soon', "2026-11-30T05:03:00Z"),
        event("Pulling", f'Pulling image "{IMAGE}"', "2026-11-30T05:00:00Z"),
    ]
    [pull] = image_pulls(events, {POD})
    assert (pull.state, pull.seconds) == ("pulled", 180.0)


def test_an_image_already_on_the_node_is_present_and_a_pull_wins_over_it() -> None:
    present = event(
        "Pulled", f'Container image "{IMAGE}" already present on machine', "2026-11-30T05:00:01Z"
    )
    assert summary(image_pulls([present], {POD})) == {
        "image_pull": "present",
        "image": IMAGE,
        "image_pull_seconds": "0.0",
    }
    pulled = event("Pulled", f'Successfully pulled image "{IMAGE}" in 1.5s', "2026-11-30T05:00:00Z")
    assert [p.state for p in image_pulls([present, pulled], {POD})] == ["pulled"]


def test_other_pods_and_reasons_are_ignored() -> None:
    events = [
        event(
            "Pulled", f'Successfully pulled image "{IMAGE}" in 9s', "2026-11-30T05:00:00Z", "op-0"
        ),
        event("Started", "Started container model", "2026-11-30T05:00:00Z"),
        {"reason": "Pulled", "message": "garbage", "involvedObject": {"kind": "Node"}},
        {},
    ]
    assert image_pulls(events, {POD}) == []
    assert summary([]) == {"image_pull": "unknown"}
