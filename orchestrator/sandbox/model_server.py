"""One real llama.cpp server, as a child process of the sandbox.

A child process, not a thread, because llama.cpp's server cannot be stopped cleanly
from inside a running event loop and must never outlive the sandbox: the parent
terminates it with SIGTERM, and it also exits when its stdin closes (the parent died).

Usage: ``python -m orchestrator.sandbox.model_server --port 0 --alias NAME --model PATH``
(``--chat-template NAME`` picks another llama.cpp built-in template; the default is the
model's own, Gemma's; ``--ignore-signal SIGINT``/``SIGTERM`` keeps a signal its parent
ignores ignored).
Prints ``READY <url>`` on stdout once the model is loaded, the server listens and its task
loop answers (only from then on does a stop surely end it).
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import sys
import threading
from typing import Any

# The signals that stop a server (the sandbox sends SIGTERM; a terminal's Ctrl-C): those
# that stop a run.
from .._signals import STOP_SIGNALS, ignored

__all__ = ["STOP_SIGNALS", "main", "server_params"]


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.sandbox.model_server")
    parser.add_argument("--model", required=True, help="GGUF file")
    parser.add_argument("--alias", required=True, help="the model name the server answers to")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--ctx", type=int, default=512)
    parser.add_argument(
        "--chat-template",
        default="gemma",
        help="llama.cpp built-in template name (default: gemma, the model's own)",
    )
    parser.add_argument(
        "--ignore-signal",
        action="append",
        default=[],
        choices=[s.name for s in STOP_SIGNALS],
        help="a stop signal the parent ignores: ignore it too (repeatable)",
    )
    return parser.parse_args(argv)


def server_params(args: argparse.Namespace) -> Any:
    """llama.cpp's parameters for one small model on one CPU thread.

    ``fit_params`` off: llama.cpp otherwise fits unset parameters (GPU layers, context
    size) to each device's free memory by loading the model once more without
    allocating it. Here there is no GPU and the context is set, so that probe changes
    nothing and costs about 0.6 CPU-seconds of every start (1.5 -> 0.9 for a start and
    one short answer), which a sandbox pays for every Workspace it serves.
    """
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = args.model
    params.model_alias = {args.alias}
    params.n_ctx = args.ctx
    # The GGUF carries no chat template, so llama.cpp would fall back to ChatML, which
    # this Gemma model does not know: it echoes the prompt and spells out "<|im_end|>".
    # Its own format is Gemma's turn markup, which llama.cpp has built in under a name
    # (a name, not Jinja source: with Jinja on, "gemma" would be rendered literally).
    params.use_jinja = False
    params.chat_template = args.chat_template
    params.n_parallel = 1
    params.cpuparams.n_threads = 1
    params.cpuparams_batch.n_threads = 1
    params.hostnames = [args.host]
    params.port = args.port
    params.verbosity = 0
    params.fit_params = False
    # The metrics route is the one request that goes through the task loop and that
    # xllamacpp lets us make in-process: main() makes it to know the loop runs.
    params.endpoint_metrics = True
    return params


def _await_task_loop(server: Any) -> None:
    """Return once the server's task loop runs, so that ``del server`` is sure to stop it.

    xllamacpp's ``Server()`` returns as soon as the model is loaded, from a thread that
    only then enters llama.cpp's task loop, and the loop marks itself running as it
    enters. A stop asked for before that (``~Server`` asks, then joins the thread) is
    overwritten, and the join waits for ever: a server told to stop soon after it came
    up never exited (on a loaded machine, with the thread not yet scheduled, 22 stops
    of 120 right after ``READY``), and a sandbox had to SIGKILL it after its grace.
    A metrics request is answered by the loop itself, so once it is, a stop holds.
    """
    answer = server.handle_metrics()
    if not answer.startswith("#"):  # Prometheus text; an error is JSON, not from the loop
        print(f"model server: the task loop did not answer: {answer[:200]}", file=sys.stderr)
        sys.stderr.flush()
        os._exit(1)  # not through `del server`, which might then wait for ever


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    # A stop is a byte on a pipe, not a threading.Event: the signal handler runs in the
    # main thread between two of its bytecodes, and Event.set() takes the lock that the
    # main thread may hold just then inside Event.wait() (a plain lock: the handler would
    # wait for itself, for ever). A write to a pipe takes no lock, and a main thread
    # blocked reading the pipe is woken by it, the handler having run in between.
    wake, stop = os.pipe()
    os.set_blocking(stop, False)

    def request_stop(*_: object) -> None:
        try:
            os.write(stop, b".")
        except BlockingIOError:
            pass  # the pipe is full of stops already asked for

    # Installed before the (slow) model load, so a SIGTERM during loading still ends us cleanly.
    # A signal ignored from the start stays ignored: the server of a run started in the
    # background shares that run's process group, and a Ctrl-C typed for the foreground
    # job must stop neither. The parent names those it ignores (--ignore-signal): a child
    # inherits an ignore through exec, but uvloop's spawn (libuv's) resets every
    # disposition to the default first.
    for sig in STOP_SIGNALS:
        if sig.name in args.ignore_signal:
            signal.signal(sig, signal.SIG_IGN)
        elif not ignored(sig):
            signal.signal(sig, request_stop)

    import xllamacpp  # imported late: it is heavy, and argument errors should not wait for it

    server = xllamacpp.Server(server_params(args))
    _await_task_loop(server)  # before any `del server`, including a stop during loading
    if select.select([wake], [], [], 0)[0]:  # stopped while the model loaded
        del server
        return 0

    def watch_parent() -> None:
        # Raw reads on fd 0: the buffered stdin's lock would abort interpreter shutdown.
        try:
            while os.read(0, 4096):
                pass
        except OSError:
            pass
        request_stop()  # EOF: the parent closed the pipe or died

    threading.Thread(target=watch_parent, daemon=True).start()
    print(f"READY {server.listening_address}", flush=True)
    os.read(wake, 1)  # a signal interrupts it, its handler writes, the read goes on
    del server
    return 0


if __name__ == "__main__":
    sys.exit(main())
