"""KubeFoundry's error bodies, and the middlewares every request goes through.

The orchestrator parses these bodies to explain failures, so they must be byte-for-byte
the real backend's shapes: ``{"error": {"message", "statusCode"}}`` for handled errors,
zod-validator's ``{"success": false, "error": {"issues", "name"}}`` for bad path/query
parameters, and a plain-text 404 outside ``/api``.
"""
from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from ..faults import SandboxState

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

STATE_KEY: web.AppKey[SandboxState] = web.AppKey("state", SandboxState)
AUTH_KEY: web.AppKey[str] = web.AppKey("auth_token", str)

PUBLIC_PREFIXES = ("/api/health", "/api/cluster/status", "/api/settings", "/api/oauth")
NO_FRONTEND = "Frontend not available. Run with frontend build or in development mode."


class ApiError(Exception):
    """Raised by handlers; becomes KubeFoundry's error body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error_response(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"message": message, "statusCode": status}}, status=status)


def zod_error(field: str, message: str) -> web.Response:
    """The 400 that Hono's zod-validator sends for an invalid path or query parameter."""
    issue = {"validation": "regex", "code": "invalid_string", "message": message, "path": [field]}
    return web.json_response({"success": False, "error": {"issues": [issue], "name": "ZodError"}}, status=400)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.message)
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed):
        if request.path.startswith("/api"):
            return error_response(404, f"Route not found: {request.method} {request.path}")
        return web.Response(status=404, text=NO_FRONTEND, content_type="text/plain", charset="UTF-8")
    except web.HTTPException:
        raise
    except Exception as exc:  # noqa: BLE001 - the real backend answers 500 with the message
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, str(exc) or type(exc).__name__)


@web.middleware
async def faults_and_auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """``backend_errors`` first (an unhealthy backend fails before it checks anything), then auth."""
    if not request.path.startswith("/api"):
        return await handler(request)
    if request.app[STATE_KEY].take_backend_error():
        return error_response(503, "Service Unavailable")
    token = request.app[AUTH_KEY]
    if token and not request.path.startswith(PUBLIC_PREFIXES):
        header = request.headers.get("Authorization", "")
        if header != f"Bearer {token}":
            return error_response(401, "Authentication required")
    return await handler(request)
