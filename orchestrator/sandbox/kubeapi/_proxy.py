"""services/{name}[:{port}]/proxy: forwards to the Service's `fake-kubelet/proxy-to` URL, streaming back."""

from __future__ import annotations

from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from . import _errors as errors
from ._resources import ResourceType
from ._store import Store

ANN_PROXY_TO = "fake-kubelet/proxy-to"

_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "authorization",
    "content-length",
}


def _split_id(service_id: str) -> tuple[str, str]:
    """`name`, `name:port` or `scheme:name:port` -> (name, port)."""
    parts = service_id.split(":")
    if len(parts) == 1:
        return parts[0], ""
    if len(parts) == 2:
        return parts[0], parts[1]
    if len(parts) == 3 and parts[0] in ("http", "https", ""):
        return parts[1], parts[2]
    raise errors.bad_request(f'invalid service request "{service_id}"')


def resolve(store: Store, rt: ResourceType, namespace: str, service_id: str) -> str:
    """The backend base URL, or the same errors as the test cluster's proxy."""
    name, port = _split_id(service_id)
    svc = store.get(rt, namespace, name)
    if port:
        ports = (svc.get("spec") or {}).get("ports") or []
        if port.isdigit():
            if not any(int(p.get("port", -1)) == int(port) for p in ports):
                raise errors.service_unavailable(
                    f'no service port {int(port)} found for service "{name}"'
                )
        elif not any(p.get("name") == port for p in ports):
            raise errors.service_unavailable(f'no endpoints available for service "{service_id}"')
    target = ((svc.get("metadata") or {}).get("annotations") or {}).get(ANN_PROXY_TO, "")
    if not target:
        raise errors.service_unavailable(f'no endpoints available for service "{name}"')
    parsed = urlsplit(target)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise errors.service_unavailable(
            f'no endpoints available for service "{name}" (annotation {ANN_PROXY_TO}="{target}" is not an http(s) URL)'
        )
    return f"{parsed.scheme}://{parsed.netloc}{parsed.path}"


def _join(base: str, path: str) -> str:
    if not path:
        return base
    return base.rstrip("/") + "/" + path.lstrip("/")


async def forward(
    request: web.Request, session: aiohttp.ClientSession, base: str, path: str
) -> web.StreamResponse:
    url = _join(base, path)
    if request.query_string:
        url += "?" + request.query_string
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
    peer = request.remote or ""
    headers["X-Forwarded-For"] = ", ".join(
        filter(None, [request.headers.get("X-Forwarded-For", ""), peer])
    )
    headers.setdefault("X-Forwarded-Host", request.host)
    headers.setdefault("X-Forwarded-Proto", request.scheme)
    body = await request.read()
    target = urlsplit(base)
    host_port = (
        target.netloc
        if target.port
        else f"{target.hostname}:{443 if target.scheme == 'https' else 80}"
    )
    try:
        upstream = await session.request(
            request.method,
            url,
            data=body if body else None,
            headers=headers,
            allow_redirects=False,
            auto_decompress=False,
        )
    except aiohttp.ClientConnectorError as exc:
        why = (
            "connect: connection refused"
            if isinstance(exc.os_error, ConnectionRefusedError)
            else str(exc.os_error)
        )
        raise errors.service_unavailable(
            f"error trying to reach service: dial tcp {host_port}: {why}"
        ) from None
    except aiohttp.ClientError as exc:
        raise errors.service_unavailable(f"error trying to reach service: {exc}") from None
    async with upstream:
        resp = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        for k, v in upstream.headers.items():
            if k.lower() not in _HOP_BY_HOP:
                resp.headers.add(k, v)
        if upstream.content_length is not None and "chunked" not in upstream.headers.get(
            "Transfer-Encoding", ""
        ):
            resp.content_length = upstream.content_length
        try:
            await resp.prepare(request)
            if request.method != "HEAD":
                async for chunk in upstream.content.iter_any():
                    await resp.write(chunk)
            await resp.write_eof()
        except (aiohttp.ClientError, ConnectionResetError):
            # The client hung up (it had what it wanted: a streamed completion read to
            # its first token, a cancelled run) or the model did. Nobody is left to
            # tell, and a traceback on the console of a passing run would only alarm.
            pass
        return resp
