"""KubeFoundry's error bodies, and the middlewares every request goes through.

The orchestrator parses these bodies to explain failures, so they must be byte-for-byte
the real backend's shapes: ``{"error": {"message", "statusCode"}}`` for handled errors,
zod-validator's ``{"success": false, "error": {"issues", "name"}}`` for bad path/query
parameters, and a plain-text 404 outside ``/api``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ..faults import ROUTES, SandboxState

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
    return web.json_response(
        {"success": False, "error": {"issues": [issue], "name": "ZodError"}}, status=400
    )


def zod_type(value: Any) -> str:
    """The JSON value's type as zod names it in "Expected string, received number"."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else "string"


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.message)
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed):
        if request.path.startswith("/api"):
            return error_response(404, f"Route not found: {request.method} {request.path}")
        return web.Response(
            status=404, text=NO_FRONTEND, content_type="text/plain", charset="UTF-8"
        )
    except web.HTTPException:
        raise
    except Exception as exc:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, str(exc) or type(exc).__name__)


def route_name(request: web.Request) -> str | None:
    """The name a fault uses for the route this request matched (see ``faults.ROUTES``)."""
    route = request.match_info.route
    canonical = getattr(route.resource, "canonical", None) if route.resource is not None else None
    for name, (method, pattern) in ROUTES.items():
        if request.method == method and canonical == pattern:
            return name
    return None


#: How each route's answer is made the wrong shape: one field the orchestrator reads is
#: retyped or dropped, so a report can be checked for naming that very field.
def _wrong_shape(route: str, body: Any) -> Any:
    if not isinstance(body, dict):
        return body
    if route == "deployment_status" and isinstance(body.get("replicas"), dict):
        body["replicas"]["ready"] = "one"
    elif route in ("provider_status", "cluster_status"):
        body["installed" if route == "provider_status" else "connected"] = "maybe"
    elif route == "install":
        body["success"] = "maybe"
    elif route == "catalog_model":
        body.pop("modelName", None)
    elif route == "create":
        body.pop("name", None)
    elif route == "delete":
        body.pop("message", None)
    return body


def _break_body(response: web.StreamResponse, route: str, kind: str) -> web.StreamResponse:
    if not isinstance(response, web.Response) or response.body is None:
        return response
    raw = bytes(response.body)  # type: ignore[arg-type]
    if kind == "invalid_json":
        broken = raw[: max(1, len(raw) // 2)]
    else:
        try:
            broken = json.dumps(_wrong_shape(route, json.loads(raw))).encode()
        except ValueError:
            return response
    return web.Response(status=response.status, body=broken, content_type="application/json")


@web.middleware
async def echo_authorization_middleware(
    request: web.Request, handler: Handler
) -> web.StreamResponse:
    """With ``echo_authorization``: an error answer quotes the Authorization header."""
    response = await handler(request)
    state = request.app[STATE_KEY]
    if not state.faults.echo_authorization or response.status < 400:
        return response
    if not isinstance(response, web.Response) or response.body is None:
        return response
    header = request.headers.get("Authorization", "(none)")
    try:
        body = json.loads(bytes(response.body))  # type: ignore[arg-type]
    except ValueError:
        body = {"error": {"message": bytes(response.body).decode("utf-8", "replace")}}  # type: ignore[arg-type]
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        message = str(body["error"].get("message", ""))
        body["error"]["message"] = f"{message} (request had Authorization: {header})"
    else:
        body = {"error": {"message": f"request had Authorization: {header}"}, "was": body}
    body["echo"] = {"headers": {"authorization": header}}
    return web.json_response(body, status=response.status)


@web.middleware
async def faults_and_auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Transport faults first (a dead or flaky backend fails before it checks anything), then auth,
    then the route's own answer, possibly broken."""
    if not request.path.startswith("/api"):
        return await handler(request)
    state = request.app[STATE_KEY]
    if state.take_backend_reset():
        # Close the connection without a byte of answer, as a crashing process or a
        # load balancer dropping a backend would.
        if request.transport is not None:
            request.transport.abort()
        return web.Response(status=500)  # never sent: aiohttp drops writes to an aborted transport
    status = state.take_backend_error()
    if status is not None:
        message = "Bad Gateway" if status == 502 else "Service Unavailable"
        return error_response(status, message)
    route = route_name(request)
    if route is not None and state.take_hang(route):
        await state.until(lambda f: f.hang_route != route)
    token = request.app[AUTH_KEY]
    if token and not request.path.startswith(PUBLIC_PREFIXES):
        header = request.headers.get("Authorization", "")
        if header != f"Bearer {token}":
            return error_response(401, "Authentication required")
    response = await handler(request)
    kind = state.take_bad_body(route) if route is not None else None
    return _break_body(response, route, kind) if kind and route else response
