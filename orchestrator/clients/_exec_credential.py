"""A kubeconfig credential plugin (``users[].user.exec``), run with a deadline.

kubernetes-asyncio runs the plugin and waits for it without a limit, and a cancelled
load leaves the plugin running. A plugin that waits for a browser login, a hardware
key or a network that is not there then holds the whole run (and Ctrl-C leaves an
orphan behind). :class:`BoundedExecProvider` takes its place: the plugin runs in a
session of its own, with stdin closed (it must not wait for a person), for at most
``timeout`` seconds, and whatever ends the wait (its answer, the deadline, a
cancellation by a signal) ends the plugin's whole process group too.

The protocol is the one the client-go credential plugins speak: the request goes in
``KUBERNETES_EXEC_INFO``, the answer is an ``ExecCredential`` on stdout.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from typing import Any

import anyio

#: Seconds a credential plugin may take. Real ones answer in well under a second from
#: their cache, a few seconds when they refresh a token over the network.
EXEC_TIMEOUT = 30.0
#: What is kept of a plugin's stderr for the error message.
STDERR_MAX = 2000


def bounded_exec_provider(base: type[Any], timeout: float) -> type[Any]:
    """A subclass of kubernetes-asyncio's ``ExecProvider`` whose ``run`` is bounded."""
    from kubernetes_asyncio.config.config_exception import ConfigException

    class BoundedExecProvider(base):  # type: ignore[misc]
        async def run(self, previous_response: str | None = None) -> Any:
            info: dict[str, Any] = {
                "apiVersion": self.api_version,
                "kind": "ExecCredential",
                "spec": {"interactive": False},
            }
            if previous_response:
                info["spec"]["response"] = previous_response
            env = {**self.env, "KUBERNETES_EXEC_INFO": json.dumps(info)}
            command = self.args[0]
            try:
                process = await anyio.open_process(
                    self.args,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            except OSError as exc:
                raise ConfigException(
                    f"exec: credential plugin {command} cannot start: {exc.strerror or exc}"
                ) from None
            try:
                with anyio.fail_after(timeout):
                    stdout, stderr = await _communicate(process)
                    code = await process.wait()
            except TimeoutError:
                raise ConfigException(
                    f"exec: credential plugin {command} gave no answer within {timeout:g} s "
                    "(a plugin that waits for a login or a device cannot be used unattended)"
                ) from None
            finally:
                await _end(process)
            if code != 0:
                tail = stderr.decode("utf-8", "replace").strip()[-STDERR_MAX:]
                raise ConfigException(
                    f"exec: credential plugin {command} exited with {code}"
                    + (f": {tail}" if tail else "")
                )
            try:
                data = json.loads(stdout)
            except ValueError:
                raise ConfigException(
                    f"exec: credential plugin {command} did not answer with JSON"
                ) from None
            if not isinstance(data, dict) or not isinstance(data.get("status"), dict):
                raise ConfigException(
                    f"exec: credential plugin {command} answered without a 'status' object"
                )
            if data.get("apiVersion") != self.api_version:
                raise ConfigException(
                    f"exec: credential plugin {command} answered apiVersion "
                    f"{data.get('apiVersion')!r}, not {self.api_version!r}"
                )
            return data["status"]

    return BoundedExecProvider


async def _communicate(process: Any) -> tuple[bytes, bytes]:
    out: list[bytes] = []
    err: list[bytes] = []

    async def drain(stream: Any, into: list[bytes]) -> None:
        if stream is None:
            return
        async for chunk in stream:
            into.append(chunk)

    async with anyio.create_task_group() as tg:
        tg.start_soon(drain, process.stdout, out)
        tg.start_soon(drain, process.stderr, err)
    return b"".join(out), b"".join(err)


async def _end(process: Any) -> None:
    """Kill the plugin's process group if it is still there, and reap it (shielded: a
    cancelled load must not leave a zombie or an orphan)."""
    with anyio.CancelScope(shield=True):
        if process.returncode is None:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        with anyio.move_on_after(5):
            await process.wait()
        await process.aclose()
