"""The KubeFoundry API stand-in: the routes the flow uses, plus the sandbox's control routes.

``/_sandbox/faults`` and ``/_sandbox/timeline`` are not KubeFoundry's: they let a test
change faults at run time and see when the sandbox moved, and are exempt from auth and
from ``backend_errors``.
"""

from __future__ import annotations

import asyncio
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from .._kube import Kube
from ..faults import SandboxState
from ..models import catalog
from . import deployments, installation
from ._listener import Listener, bind
from .errors import (
    AUTH_KEY,
    STATE_KEY,
    ApiError,
    echo_authorization_middleware,
    errors_middleware,
    faults_and_auth_middleware,
)
from .installation import CRD_DIR_KEY, KUBE_KEY, PROVIDER_CRDS_KEY, PROVIDERS, any_provider_status

KUBEFOUNDRY_NAMESPACE = deployments.BACKEND_NAMESPACE


def _timestamp() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "healthy", "timestamp": _timestamp()})


async def cluster_status(request: web.Request) -> web.Response:
    """200 even when the cluster is unreachable, as the real backend does."""
    kube = request.app[KUBE_KEY]
    body = {"connected": True, "namespace": KUBEFOUNDRY_NAMESPACE}
    try:
        await kube.get("/api/v1/namespaces", {"limit": 1})
        if kube.cluster_name:
            body["clusterName"] = kube.cluster_name
    except Exception as exc:
        body = {"connected": False, "namespace": KUBEFOUNDRY_NAMESPACE, "error": str(exc)}
    body["provider"] = {"id": "dynamo", "name": PROVIDERS["dynamo"]["name"]}
    body["providerInstallation"] = await any_provider_status(kube, "dynamo")
    return web.json_response(body)


async def settings(request: web.Request) -> web.Response:
    providers = [
        {
            "id": pid,
            "name": p["name"],
            "description": p["description"],
            "defaultNamespace": p["defaultNamespace"],
        }
        for pid, p in PROVIDERS.items()
    ]
    return web.json_response(
        {"config": {}, "providers": providers, "auth": {"enabled": bool(request.app[AUTH_KEY])}}
    )


async def runtimes_status(request: web.Request) -> web.Response:
    runtimes = []
    for pid, provider in PROVIDERS.items():
        status = await any_provider_status(request.app[KUBE_KEY], pid)
        runtimes.append(
            {
                "id": pid,
                "name": provider["name"],
                "installed": status["installed"],
                "healthy": status["installed"],
                "message": status["message"],
            }
        )
    return web.json_response({"runtimes": runtimes})


async def aikit_models(request: web.Request) -> web.Response:
    models = catalog()
    return web.json_response({"models": models, "total": len(models)})


async def aikit_model(request: web.Request) -> web.Response:
    model_id = request.match_info["id"]
    for model in catalog():
        if model["id"] == model_id:
            return web.json_response(model)
    raise ApiError(404, f"Premade model not found: {model_id}")


async def get_faults(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE_KEY].faults.model_dump())


async def set_faults(request: web.Request) -> web.Response:
    try:
        patch = await request.json()
        if not isinstance(patch, dict):
            raise ValueError("expected a JSON object")
        faults = request.app[STATE_KEY].update(patch)
    except (ValueError, ValidationError) as exc:
        return web.json_response({"error": {"message": str(exc), "statusCode": 400}}, status=400)
    return web.json_response(faults.model_dump())


RESTART_KEY: web.AppKey[list[Any]] = web.AppKey("restart", list)
#: The timeline's name for the backend's restarts ("down", then "up"): a failed run's
#: diagnostics show when the backend was away, and a test can wait for either moment.
RESTART_NAME = "kubefoundry-backend"


async def restart(request: web.Request) -> web.Response:
    """``POST /_sandbox/restart {"down_seconds": S}``: answer, then restart the backend."""
    try:
        body = await request.json() if request.can_read_body else {}
        down = float((body or {}).get("down_seconds", 0))
        if down < 0:
            raise ValueError("down_seconds must be >= 0")
    except (ValueError, TypeError, AttributeError) as exc:
        return web.json_response({"error": {"message": str(exc), "statusCode": 400}}, status=400)
    hooks = request.app[RESTART_KEY]
    if not hooks:
        return web.json_response(
            {"error": {"message": "restart is not available", "statusCode": 501}}, status=501
        )
    task = asyncio.get_running_loop().create_task(hooks[0](down))
    _background.add(task)
    task.add_done_callback(_background.discard)
    return web.json_response({"restarting": True, "down_seconds": down})


_background: set[asyncio.Task[None]] = set()


async def timeline(request: web.Request) -> web.Response:
    return web.json_response({"events": [e.model_dump() for e in request.app[STATE_KEY].timeline]})


def create_app(
    kube: Kube,
    state: SandboxState,
    auth_token: str | None = None,
    crd_dir: Path | None = None,
    provider_crds: dict[str, Path] | None = None,
) -> web.Application:
    app = web.Application(
        middlewares=[echo_authorization_middleware, errors_middleware, faults_and_auth_middleware]
    )
    app[KUBE_KEY] = kube
    app[STATE_KEY] = state
    app[AUTH_KEY] = auth_token or ""
    app[CRD_DIR_KEY] = str(crd_dir) if crd_dir else ""
    app[PROVIDER_CRDS_KEY] = {k: str(v) for k, v in (provider_crds or {}).items()}
    app[RESTART_KEY] = []
    r = app.router
    r.add_get("/api/health", health)
    r.add_get("/api/cluster/status", cluster_status)
    r.add_get("/api/settings", settings)
    r.add_get("/api/runtimes/status", runtimes_status)
    r.add_get("/api/installation/helm/status", installation.helm_status)
    r.add_get("/api/installation/providers/{id}/status", installation.provider_status)
    r.add_post("/api/installation/providers/{id}/install", installation.install_provider)
    r.add_get("/api/aikit/models", aikit_models)
    r.add_get("/api/aikit/models/{id}", aikit_model)
    deployments.add_routes(app)
    r.add_get("/_sandbox/faults", get_faults)
    r.add_post("/_sandbox/faults", set_faults)
    r.add_get("/_sandbox/timeline", timeline)
    r.add_post("/_sandbox/restart", restart)
    return app


class KubeFoundryServer:
    """The stand-in listening on ``host:port`` (0 picks a free port)."""

    def __init__(
        self,
        kube: Kube,
        state: SandboxState,
        host: str = "127.0.0.1",
        port: int = 0,
        auth_token: str | None = None,
        crd_dir: Path | None = None,
        provider_crds: dict[str, Path] | None = None,
    ) -> None:
        self._args = (kube, state, auth_token, crd_dir, provider_crds)
        self.app = self._make_app()
        self.host = host
        self.port = port
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._listener: Listener | None = None
        #: While a restart is down: its port, bound and not listening (see ``_listener``).
        self._held: socket.socket | None = None
        self._stopped = False

    def _make_app(self) -> web.Application:
        app = create_app(*self._args)
        app[RESTART_KEY].append(self.restart)
        return app

    async def start(self) -> None:
        # A short shutdown: a request held by ``hang_route`` must not hold a restart or
        # the sandbox's exit for aiohttp's default minute.
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        assert self._runner.server is not None
        # Not an aiohttp site: the listener resets every connection when it stops (see
        # ``_listener``), where a stopped site could leave one open and unanswered.
        # A restart listens on the port it held while down: the same address, with no
        # moment in which another socket could have taken it.
        self._stopped = False
        held, self._held = self._held, None
        self._listener = Listener(
            self._runner.server, held if held is not None else bind(self.host, self.port)
        )
        self.port = self._listener.port
        self.url = f"http://{self.host}:{self.port}"

    async def stop(self) -> None:
        """Reset every connection, as a dying process does, then let the app clean up.

        A restart that is down at the time stays down, and lets its port go.
        """
        self._stopped = True
        await self._go_down(hold_port=False)

    async def _go_down(self, *, hold_port: bool) -> None:
        if self._held is not None and not hold_port:
            self._held.close()
            self._held = None
        if self._listener is not None:
            self._held = await self._listener.reset(hold_port=hold_port)
            self._listener = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def restart(self, down_for: float = 0.0) -> None:
        """Go away (open connections are reset), stay down ``down_for`` seconds, come back on the same port.

        What a backend restart looks like to a client: a reset, then refused connections,
        then the same URL answering again, with the state that lives in the cluster intact.
        """
        state = self._args[1]
        await self._go_down(hold_port=True)
        state.record("", RESTART_NAME, "down")
        await self._stay_down(down_for)
        if self._stopped or self._listener is not None:
            return  # stopped for good meanwhile, or already back (an overlapping restart)
        self.app = self._make_app()
        await self.start()
        state.record("", RESTART_NAME, "up")

    async def _stay_down(self, seconds: float) -> None:
        """The downtime of a restart: a test overrides it to look around for as long as it needs."""
        if seconds > 0:
            await asyncio.sleep(seconds)
