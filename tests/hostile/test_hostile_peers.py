"""Full runs through hostile peers: named mutations, then hypothesis-drawn ones.

Each row runs the real command through :class:`HostileProxy` in front of the
Kubernetes API (the sandbox's and the test cluster's) and the backend, and checks
what :func:`assert_survived` checks: a named reason, a documented exit code, cleanup
done, nothing left in the cluster, no secret in any output, no traceback.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import anyio
import pytest
from hostile_harness import Hostile, assert_survived, run_hostile, secrets_shown
from hypothesis import HealthCheck, event, given, settings
from proxy import BACKEND_TARGETS, ECHO_FORMS, KUBE_TARGETS, Mutation, plans

pytestmark = [pytest.mark.anyio, pytest.mark.cluster]

#: The backend's answer to "how is this deployment": the status every wait asks.
STATUS_ROUTE = re.compile(BACKEND_TARGETS["status"]["path"])


def phase_message(result, title: str) -> str:
    return result.status_of(title)["message"]


async def test_garbage_on_every_watch_stream_still_passes(hostile: Hostile, tmp_path: Path) -> None:
    # Every watch stream interleaves non-JSON and wrong-shape lines with the real events:
    # the watches relist, the hub stays up, the runner is never cancelled.
    hostile.kube.add(Mutation("garbage_lines", watch=True, times=None))
    result = await run_hostile(hostile, tmp_path / "artifacts")
    assert result.code == 0, result.stdout + result.stderr
    assert any(name == "garbage_lines" for name, _, _ in hostile.kube.applied)
    await assert_survived(hostile, result)


async def test_error_events_do_not_turn_watching_off(hostile: Hostile, tmp_path: Path) -> None:
    hostile.kube.add(Mutation("error_event", watch=True, times=6))
    result = await run_hostile(hostile, tmp_path / "artifacts")
    assert result.code == 0, result.stdout + result.stderr
    await assert_survived(hostile, result)


async def test_watches_that_stall_in_delete_do_not_hold_it(
    hostile: Hostile, tmp_path: Path
) -> None:
    # From Delete on, every watch stream (those open already too) stops talking while
    # lists still work: the watches' view keeps showing the Workspace and its pods. The
    # wait must take a fresh list's word for it, not wait on that view until it times out.
    result = await run_hostile(
        hostile,
        tmp_path / "artifacts",
        "--delete-timeout",
        "30000",
        hooks=[("Delete ... started", hostile.kube.freeze_watches)],
    )
    assert result.code == 0, result.stdout + result.stderr
    assert result.status_of("Delete")["status"] == "passed"
    await assert_survived(hostile, result)


#: The shared streams Wait Ready listens on (KAITO): the Workspaces and the pods of its
#: namespace.
WAIT_READY_STREAMS = (
    re.compile(r"^/apis/kaito\.sh/[^/]+/namespaces/kaito-workspace/workspaces\?"),
    re.compile(r"^/api/v1/namespaces/kaito-workspace/pods\?"),
)


async def test_a_stalled_watch_is_ended_by_the_safety_recheck(
    hostile: Hostile, tmp_path: Path
) -> None:
    # From Deploy until Wait Ready has passed, every watch stream (those open already
    # too) says nothing, without an error; lists still work. The Workspace is held back
    # from ready until Wait Ready has asked the backend once after its watches went live:
    # from then on no event and no finished listing can wake the wait, so only the
    # safety re-check can end it.
    hostile.sandbox.update_faults({"never_ready": True})
    wait_ready = anyio.Event()
    released = False

    def live(pattern: re.Pattern[str]) -> bool:
        return any(watch and pattern.search(path) for _, path, watch in hostile.kube.seen)

    async def release() -> None:
        nonlocal released
        await wait_ready.wait()
        await hostile.kube.until(lambda: all(live(p) for p in WAIT_READY_STREAMS))
        after, seen = len(hostile.backend.seen), hostile.backend.seen
        await hostile.backend.until(
            lambda: any(
                i >= after and seen[i][0] == "GET" and STATUS_ROUTE.search(seen[i][1])
                for i in hostile.backend.answered
            )
        )
        hostile.sandbox.update_faults({"never_ready": False})
        released = True

    async with anyio.create_task_group() as tg:
        tg.start_soon(release)
        result = await run_hostile(
            hostile,
            tmp_path / "artifacts",
            "--recheck-interval",
            "3000",
            "--deployment-ready-timeout",
            "60000",
            hooks=[
                ("Deploy llama3.2:1b ... started", hostile.kube.freeze_watches),
                ("Wait Ready ... started", wait_ready.set),
                ("Wait Ready ... passed", hostile.kube.clear),
            ],
        )
        tg.cancel_scope.cancel()
    assert released, "Wait Ready never asked the backend after its watches went live"
    assert result.code == 0, result.verdicts()
    assert result.status_of("Wait Ready")["status"] == "passed", result.verdicts()
    log = result.run_json()["log"]
    assert any(" wait_ready: answered at the 3 s safety re-check" in line for line in log), log
    await assert_survived(hostile, result)


async def test_flaky_kubernetes_reads_are_retried(hostile: Hostile, tmp_path: Path) -> None:
    # Lists (the leak check's above all) answer 503, 429 and resets before they work.
    hostile.kube.add(
        Mutation("status", watch=False, method="GET", path=r"/(pods|services)\?", times=2),
        Mutation(
            "status",
            watch=False,
            method="GET",
            path=r"/workspaces",
            times=2,
            params={"status": 429, "retry_after": 1},
        ),
        Mutation("reset", watch=False, method="GET", path=r"/services\?", times=1),
    )
    result = await run_hostile(hostile, tmp_path / "artifacts")
    assert result.code == 0, result.stdout + result.stderr
    await assert_survived(hostile, result)


async def test_backend_echoing_the_token_leaks_it_nowhere(hostile: Hostile, tmp_path: Path) -> None:
    # Every status answer echoes the Authorization header: Wait Ready fails, naming the
    # route, and neither the console nor any artifact shows the token.
    hostile.backend.add(
        Mutation(
            "echo_authorization",
            path=r"^/api/deployments/[^/?]+\?",
            method="GET",
            times=None,
            params={"status": 400},
        )
    )
    result = await run_hostile(hostile, tmp_path / "artifacts")
    assert result.code == 1, result.stdout + result.stderr
    assert "/api/deployments/" in phase_message(result, "Deploy llama3.2:1b") + phase_message(
        result, "Wait Ready"
    )
    await assert_survived(hostile, result)


#: Tokens a peer's encodings change: percent-encoding, JSON's ``\\/``, base64.
ECHOED_TOKENS = ("echo/5f3c+9a1=e7d2-never-shown", "kube/77b1+c0de=5a-never-shown")
#: Tokens shorter than the redactor masks everywhere: masked where they stand as words.
SHORT_TOKENS = ("k3Y9", "Zq7x")


@pytest.mark.parametrize(
    "tokens, plugin",
    [(ECHOED_TOKENS, False), (SHORT_TOKENS, False), (ECHOED_TOKENS, True)],
    ids=["long", "short", "credential-plugin"],
)
async def test_peers_echoing_the_tokens_in_any_form_leak_them_nowhere(
    hostile: Hostile, tmp_path: Path, tokens: tuple[str, str], plugin: bool
) -> None:
    # Both peers answer a few requests with 503 (retried; each retry note quotes the
    # body) that quotes the token they received in each form a careless peer uses, the
    # last one split across two chunks of the body.
    backend_token, kube_token = tokens
    forms = [f for f in ECHO_FORMS if not (f == "base64" and len(backend_token) < 6)]
    hostile.backend.add(
        Mutation(
            "echo_secret",
            method="GET",
            path=STATUS_ROUTE.pattern,
            times=len(forms),
            params={"forms": forms},
        )
    )
    hostile.kube.add(
        Mutation(
            "echo_secret",
            watch=False,
            method="GET",
            path=r"/pods\?",
            times=1,
            params={"forms": ["plain"], "status": 403},
        )
    )
    # The kubeconfig's own token, or one a credential plugin answers with.
    hostile.kube.write_kubeconfig(hostile.kubeconfig, token=kube_token, plugin=plugin)
    result = await run_hostile(
        hostile, tmp_path / "artifacts", env={"KUBEFOUNDRY_TOKEN": backend_token}
    )
    out = result.stdout + result.stderr
    # Each peer quoted the token it was sent: the plugin's, when there is one.
    assert hostile.backend.echoed == [backend_token] * len(forms), out
    assert hostile.kube.echoed == [kube_token], out
    # The echoes reached the console, masked: a leak would have been seen.
    assert "token *** refused (plain)" in result.stdout, out
    assert secrets_shown(result, [backend_token, kube_token]) == []
    if len(backend_token) < 6:
        # Named, never shown: the KubeFoundry token and the kubeconfig's.
        assert out.count("is shorter than 6 characters") == 2, out
    await assert_survived(hostile, result)


async def test_a_trickling_body_fails_naming_the_route_and_what_arrived(
    hostile: Hostile, tmp_path: Path
) -> None:
    hostile.backend.add(
        Mutation(
            "trickle",
            path=r"^/api/deployments/[^/?]+\?",
            method="GET",
            times=None,
            params={"interval": 0.2, "forever": True},
        )
    )
    result = await run_hostile(
        hostile,
        tmp_path / "artifacts",
        "--deploy-timeout",
        "4000",
        "--deployment-ready-timeout",
        "4000",
    )
    assert result.code == 1, result.stdout + result.stderr
    message = phase_message(result, "Deploy llama3.2:1b") + phase_message(result, "Wait Ready")
    assert "GET /api/deployments/" in message and "bytes of the body arrived" in message, message
    await assert_survived(hostile, result)


async def test_wrong_shape_and_broken_bodies_from_the_kubernetes_api(
    hostile: Hostile, tmp_path: Path
) -> None:
    hostile.kube.add(
        Mutation("wrong_shape", watch=False, method="GET", path=r"/pods\?", times=2),
        Mutation("not_json", watch=False, method="GET", path=r"/services\?", times=1),
        Mutation("truncate", watch=False, method="GET", path=r"/workspaces", times=1),
    )
    result = await run_hostile(hostile, tmp_path / "artifacts")
    await assert_survived(hostile, result)


async def test_endless_interim_answers_from_the_backend_end_the_run_named(
    hostile: Hostile, tmp_path: Path
) -> None:
    # Every status answer is interim (1xx) answers without end, and every watch stream a
    # chunk extension without end: the status route fails at once, named, not at the
    # phase's deadline; the watches are refused at their bound and reopened; cleanup
    # goes on through the other routes and nothing is left.
    hostile.backend.add(
        Mutation("interim_flood", method="GET", path=STATUS_ROUTE.pattern, times=None)
    )
    hostile.kube.add(Mutation("chunk_extension", watch=True, times=None))
    result = await run_hostile(hostile, tmp_path / "artifacts")
    assert result.code == 1, result.verdicts()
    message = phase_message(result, "Deploy llama3.2:1b") + phase_message(result, "Wait Ready")
    assert "over 8 interim (1xx) answers" in message, result.verdicts()
    assert "timed out" not in message, result.verdicts()
    assert any(name == "chunk_extension" for name, _, _ in hostile.kube.applied)
    await assert_survived(hostile, result)


async def test_kubernetes_reads_flooded_with_interim_answers_are_retried_and_pass(
    hostile: Hostile, tmp_path: Path
) -> None:
    # A few lists answered with interim answers without end: each try ends at once at the
    # bound, and the reads' retries (broken bytes are retried for Kubernetes reads) pass.
    hostile.kube.add(
        Mutation("interim_flood", watch=False, method="GET", path=r"/(pods|services)\?", times=3)
    )
    result = await run_hostile(hostile, tmp_path / "artifacts")
    assert result.code == 0, result.verdicts()
    assert sum(name == "interim_flood" for name, _, _ in hostile.kube.applied) == 3
    await assert_survived(hostile, result)


@pytest.mark.parametrize("mutation", ["wrong_shape", "not_json"])
async def test_a_broken_delete_answer_still_leaves_nothing(
    hostile: Hostile, tmp_path: Path, mutation: str
) -> None:
    # Wait Ready fails on a wrong-shaped status; Cleanup's DELETE is answered with a
    # broken body: Cleanup deletes through Kubernetes and nothing is left.
    hostile.backend.add(
        Mutation("wrong_shape", method="GET", path=r"^/api/deployments/[^/?]+\?", times=None),
        Mutation(mutation, method="DELETE", path=r"^/api/deployments/", times=None),
    )
    result = await run_hostile(hostile, tmp_path / "artifacts")
    await assert_survived(hostile, result)


#: Examples of the randomized mode: a few in the suite, more on demand (HOSTILE_EXAMPLES).
EXAMPLES = int(os.environ.get("HOSTILE_EXAMPLES", "3"))


@pytest.mark.timeout(max(300, 60 * EXAMPLES))
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=False,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(kube_plan=plans(KUBE_TARGETS), backend_plan=plans(BACKEND_TARGETS, max_size=2))
async def test_randomized_hostile_peers(
    hostile: Hostile, tmp_path: Path, kube_plan: list[Mutation], backend_plan: list[Mutation]
) -> None:
    hostile.kube.add(*kube_plan)
    hostile.backend.add(*backend_plan)
    before = len(hostile.kube.applied), len(hostile.backend.applied)
    artifacts = tmp_path / f"artifacts-{len(list(tmp_path.glob('artifacts-*')))}"
    # A drawn stall_watch leaves a wait to the harness's short safety re-check.
    result = await run_hostile(hostile, artifacts, "--deployment-ready-timeout", "60000")
    await assert_survived(hostile, result)
    # What the examples did, for --hypothesis-show-statistics.
    applied = hostile.kube.applied[before[0] :] + hostile.backend.applied[before[1] :]
    for name in sorted({name for name, _, _ in applied}):
        event(f"applied {name}")
    if any("safety re-check" in line for line in result.run_json().get("log", [])):
        event("a wait was answered at the safety re-check")
