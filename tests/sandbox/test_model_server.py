"""The llama.cpp child process: it comes up under its alias, exits cleanly, and never outlives the sandbox."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from _fixtures import (  # noqa: F401 - fixtures are used by name
    NAME,
    WS_COLLECTION,
    create_deployment,
    install_kaito,
    kube_backend,
    make_sandbox,
    running_workspace,
    wait_for,
)

import orchestrator
from orchestrator._signals import Disposition, with_signals
from orchestrator.clients import InferenceClient, InferenceRoute
from orchestrator.clients._completion import template_leaks
from orchestrator.sandbox.model_server import _parse, server_params
from orchestrator.sandbox.models import ModelProcess, model_file

pytestmark = [pytest.mark.anyio, pytest.mark.model]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _children(pid: int) -> set[int]:
    out = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    out.add(int(entry))
            except (FileNotFoundError, ProcessLookupError, IndexError):
                pass
    return out


PROMPTS = ("Say hello in exactly 3 words.", "What is the capital of France?")


async def test_model_server_answers_to_its_alias_in_its_own_template_and_exits_on_sigterm(
    tmp_path: Path,
) -> None:
    process = ModelProcess("llama-3.2-1b-instruct", await model_file(), tmp_path / "model.log")
    url = await process.start()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{url}/v1/models") as resp:
                models = await resp.json()
            # The prompt goes out in Gemma's turn markup (the model's own), so the model
            # answers as the model turn instead of echoing a ChatML transcript.
            async with session.post(
                f"{url}/apply-template", json={"messages": [{"role": "user", "content": "hi"}]}
            ) as resp:
                rendered = (await resp.json())["prompt"]
            answers = []
            for prompt in PROMPTS:
                body = {
                    "model": "llama-3.2-1b-instruct",
                    "messages": [{"role": "user", "content": prompt}],
                    "max_tokens": 40,
                    "temperature": 0,
                }
                async with session.post(f"{url}/v1/chat/completions", json=body) as resp:
                    answers.append((await resp.json())["choices"][0]["message"]["content"])
        # The Inference phase's own client on its ``url`` route (the backend's transport,
        # with its bounds): a streamed answer and a whole one, each judged whole.
        model = InferenceClient(InferenceRoute("url", url))
        try:
            asked = {"namespace": "ns", "service": "s", "port": 80, "max_tokens": 16}
            streamed = await model.complete(
                model="llama-3.2-1b-instruct", prompt=PROMPTS[0], **asked
            )
            whole = await model.chat(model="llama-3.2-1b-instruct", prompt=PROMPTS[1], **asked)
        finally:
            await model.aclose()
        assert [m["id"] for m in models["data"]] == ["llama-3.2-1b-instruct"]
        assert rendered == "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n"
        for answer in answers:
            assert answer.strip()
            assert template_leaks(answer) == [], answer  # what the Inference gate checks
        assert streamed.streamed and streamed.content_chunks > 0 and streamed.content.strip()
        assert not whole.streamed and whole.content.strip()
        assert streamed.attempts == whole.attempts == 1
    finally:
        await process.stop()
    assert process._proc is not None and process._proc.returncode == 0


def test_the_server_is_set_for_one_cpu_and_does_not_probe_device_memory() -> None:
    """Everything llama.cpp would fit to a device's memory is set, so its fitting probe (a
    second load of the model, about 0.6 CPU-seconds of every start) is off."""
    args = _parse(["--model", "m.gguf", "--alias", "a", "--ctx", "256"])
    params = server_params(args)
    assert params.fit_params is False
    assert params.endpoint_metrics is True  # the request that shows the task loop runs
    assert (params.n_ctx, params.n_parallel) == (256, 1)
    assert params.cpuparams.n_threads == params.cpuparams_batch.n_threads == 1
    assert params.model.path == "m.gguf" and params.model_alias == {"a"}


async def test_cancelling_a_sandbox_leaves_no_model_process(make_sandbox) -> None:
    before = _children(os.getpid())
    started = asyncio.Event()

    async def run() -> None:
        async with make_sandbox() as (sandbox, api, kube):
            await install_kaito(api, kube)
            await create_deployment(api)
            await wait_for(kube, WS_COLLECTION, NAME, running_workspace)
            started.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(run())
    await asyncio.wait_for(started.wait(), 120)
    models = _children(os.getpid()) - before
    assert models, "the model server should be a child process"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not [pid for pid in models if _alive(pid)]


def _signal_mask(pid: int, field: str = "SigIgn") -> int:
    """The kernel's mask of the signals ``pid`` ignores (``SigIgn``) or catches (``SigCgt``)."""
    with open(f"/proc/{pid}/status") as status:
        fields = dict(line.split(":\t", 1) for line in status if ":\t" in line)
    return int(fields[field], 16)


def _bit(sig: signal.Signals) -> int:
    return 1 << (sig - 1)


def _outcome(returncode: int | None, log_path: Path) -> str:
    """How a model server ended, for a failure message: its exit code (or the signal that
    killed it) and the end of its log (llama.cpp's errors; a hung server's stacks)."""
    if returncode is None:
        how = "still running"
    elif returncode < 0:
        how = f"killed by {signal.Signals(-returncode).name}"
    else:
        how = f"exit code {returncode}"
    tail = log_path.read_text(errors="replace")[-3000:] if log_path.exists() else ""
    return f"{how}; its log ends:\n{tail or '(empty)'}"


@contextlib.asynccontextmanager
async def _deadline(
    proc: asyncio.subprocess.Process, seconds: float, awaited: str, log_path: Path
) -> AsyncIterator[None]:
    """``asyncio.timeout(seconds)``; when it runs out, the server is aborted with SIGABRT,
    and started with ``PYTHONFAULTHANDLER`` set it writes every thread's stack to its log
    first: the failure says where it hung, not only that it did."""
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError:
        if proc.returncode is None:
            proc.send_signal(signal.SIGABRT)
            async with asyncio.timeout(30):
                await proc.wait()
        outcome = _outcome(proc.returncode, log_path)
        raise AssertionError(f"no {awaited} within {seconds} s, then aborted: {outcome}") from None


@pytest.mark.parametrize(
    "anyio_backend", [pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop")]
)
async def test_a_model_server_keeps_the_ignores_of_its_run_and_still_stops_cleanly(
    anyio_backend: object, tmp_path: Path
) -> None:
    """A run started with SIGINT and SIGTERM ignored (a script's background job; some
    supervisors) has model servers that ignore them too: a Ctrl-C or SIGTERM for the
    whole process group is not theirs. uvloop's spawn resets every disposition to the
    default, so the run says which ones it ignores (``--ignore-signal``), and only that
    makes them ignored here. (asyncio's spawn hands an ignore down by itself, so a run on
    it would pass without the flag: the next test holds the flag to its word.) The
    sandbox still stops a server at once and cleanly, through its stdin, not after the
    grace's SIGKILL."""
    model = await model_file()
    process = ModelProcess("llama-3.2-1b-instruct", model, tmp_path / "model.log")
    both = (signal.SIGINT, signal.SIGTERM)
    before = {sig: signal.signal(sig, signal.SIG_IGN) for sig in both}  # the run's start
    try:
        await process.start()
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
    try:
        assert process._proc is not None
        ignored = _signal_mask(process._proc.pid)
        assert all(ignored & _bit(sig) for sig in both), f"{ignored:x}"
    finally:
        await process.stop()
    outcome = _outcome(process._proc.returncode, process.log_path)
    assert process._proc.returncode == 0, f"not a clean stop (SIGKILL: past its grace): {outcome}"


async def test_the_model_server_ignores_the_signals_it_is_told_to_though_it_found_them_default(
    tmp_path: Path,
) -> None:
    """``--ignore-signal`` is the one way a parent whose spawn resets dispositions (uvloop)
    hands down an ignore: the server ignores what the flag names although it started
    with every stop signal at its default, and still stops on one that is not named."""
    package_root = str(Path(orchestrator.__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    model = str(await model_file())
    argv = [sys.executable, "-m", "orchestrator.sandbox.model_server", "--model", model]
    argv += ["--alias", "a", "--port", "0", "--ignore-signal=SIGINT"]
    defaults: dict[int, Disposition] = {signal.SIGINT: "default", signal.SIGTERM: "default"}
    env["PYTHONFAULTHANDLER"] = "1"  # a crash, or the abort of a hang, writes its stacks
    log_path = tmp_path / "model.log"
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            *with_signals(argv, defaults),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
            env=env,
        )
    try:
        assert proc.stdout is not None
        async with _deadline(proc, 120, "READY line", log_path):
            ready = await proc.stdout.readline()
        assert ready.startswith(b"READY "), _outcome(proc.returncode, log_path)
        ignored, caught = _signal_mask(proc.pid), _signal_mask(proc.pid, "SigCgt")
        proc.send_signal(signal.SIGTERM)  # not named: it stops the server
        async with _deadline(proc, 60, "exit after SIGTERM", log_path):
            code = await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert ignored & _bit(signal.SIGINT), f"{ignored:x}"
    assert not ignored & _bit(signal.SIGTERM) and caught & _bit(signal.SIGTERM), f"{caught:x}"
    assert code == 0, _outcome(code, log_path)
