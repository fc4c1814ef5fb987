"""A thin JSON-in, JSON-out Kubernetes client for the stand-ins, over kubernetes-asyncio.

The stand-ins only move plain manifests around (Workspaces have no generated model), so
dicts are simpler than the generated classes; kubernetes-asyncio still does the
kubeconfig, TLS and token handling, which keeps them honest clients of a real API server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import ssl
import urllib.request
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlencode, urlsplit

import aiohttp
import yaml
from aiohttp.helpers import get_env_proxy_for_url
from kubernetes_asyncio import client, config
from yarl import URL

from .._key_files import forget_written, key_files_in_memory

log = logging.getLogger(__name__)

JSON = dict[str, Any]
MERGE_PATCH = "application/merge-patch+json"


class LocalServer(Protocol):
    """An API server in this process that answers plain requests without HTTP."""

    async def call(
        self,
        method: str,
        path: str,
        query: Mapping[str, str] | None = None,
        body: bytes = b"",
        content_type: str = "application/json",
    ) -> tuple[int, bytes]: ...

    def watch(
        self, path: str, query: Mapping[str, str]
    ) -> AsyncIterator[list[tuple[str, JSON]]]: ...


class KubeError(Exception):
    """A non-2xx answer from the API server, with its Status message."""

    def __init__(self, status: int, message: str, reason: str = "") -> None:
        super().__init__(f"{status} {reason}: {message}" if reason else f"{status}: {message}")
        self.status = status
        self.message = message
        self.reason = reason


class Gone(KubeError):
    """410: the resource version we watched from has been compacted away; relist."""


def _api_client(cfg: client.Configuration) -> client.ApiClient:
    """An ApiClient for ``cfg``, without the CA bundle when it can never open a TLS connection.

    kubernetes-asyncio's REST client builds a verifying TLS context for every ApiClient,
    and with no CA in the kubeconfig that loads the system's whole CA bundle, about 18 ms
    of CPU, also for the sandbox's own ``http://`` API server, whose every stand-in set
    builds one. A plain-HTTP server reached directly (no proxy) gets a bare client context
    instead, swapped in while the ApiClient is built (synchronously: nothing else sees
    it); it trusts no CA, so were it ever used, it could only fail.
    """
    from kubernetes_asyncio.client import rest

    if (
        urlsplit(str(cfg.host)).scheme.lower() != "http"
        or cfg.proxy
        or urllib.request.getproxies()
        or getattr(rest, "ssl") is not ssl  # noqa: B009  (not re-exported)
    ):
        return client.ApiClient(cfg)
    setattr(rest, "ssl", _NoCaBundle())  # noqa: B010  (the module the REST client reads)
    try:
        return client.ApiClient(cfg)
    finally:
        setattr(rest, "ssl", ssl)  # noqa: B010


class _NoCaBundle:
    """``ssl`` as the REST client sees it while it builds a client of a plain-HTTP server."""

    @staticmethod
    def create_default_context(*_args: Any, **_kwargs: Any) -> ssl.SSLContext:
        return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)

    def __getattr__(self, name: str) -> Any:
        return getattr(ssl, name)


class Kube:
    """Requests to one API server; every method takes and returns JSON objects."""

    def __init__(
        self, api: client.ApiClient, cluster_name: str = "", local: LocalServer | None = None
    ) -> None:
        self.api = api
        self.cluster_name = cluster_name
        #: The sandbox's own API server, when it runs in this process: plain requests are
        #: then served in-process; watches still go over HTTP.
        self.local = local
        #: The session requests are sent on, and what each passes it (see _open_session).
        self._session: tuple[aiohttp.ClientSession, dict[str, Any]] | None = None

    @classmethod
    async def from_kubeconfig(cls, path: Path, *, local: LocalServer | None = None) -> Kube:
        cfg = client.Configuration()
        # A cluster's kubeconfig may carry its client key inline (kind's does): the loader
        # writes it to memory files that the TLS context reads while the ApiClient is
        # built and that are gone when it is, not to temporary files that only a normal
        # exit removes (see _key_files).
        with key_files_in_memory() as written:
            await config.load_kube_config(config_file=str(path), client_configuration=cfg)
            api = _api_client(cfg)
        forget_written(cfg, written)
        return cls(api, cluster_name=_cluster_name(path), local=local)

    async def close(self) -> None:
        if self._session is not None:
            await self._session[0].close()  # not its connector: the ApiClient's, closed next
        await self.api.close()

    def _open_session(self) -> tuple[aiohttp.ClientSession, dict[str, Any]]:
        """A session on the ApiClient's own connector, and what each request passes it.

        The same connection pool and TLS context (the connector holds both), cookie jar,
        read buffer, proxy and TLS server name as the ApiClient's session, but with
        ``trust_env`` off: with it on, aiohttp asks a worker thread, on every request,
        for the netrc entry and then for the environment's proxy, two round trips
        through a thread pool for each of the stand-ins' thousands of requests. Both
        are asked once here, with the same functions, and passed with each request.
        """
        rest = self.api.rest_client
        own: aiohttp.ClientSession = rest.pool_manager
        session = aiohttp.ClientSession(
            connector=own.connector,
            connector_owner=False,
            cookie_jar=own.cookie_jar,
            read_bufsize=2**21,  # as kubernetes-asyncio's own session
        )
        extra: dict[str, Any] = {}
        server = URL(str(self.api.configuration.host))
        if rest.proxy:
            extra["proxy"] = rest.proxy
        elif own.trust_env:
            try:
                extra["proxy"], extra["proxy_auth"] = get_env_proxy_for_url(server)
            except LookupError:
                pass
        if rest.proxy_headers:
            extra["proxy_headers"] = rest.proxy_headers
        if rest.server_hostname:
            extra["server_hostname"] = rest.server_hostname
        if own.trust_env and server.host is not None:
            netrc_auth = own._get_netrc_auth(server.host)
            if netrc_auth is not None:
                extra["auth"] = netrc_auth
        self._session = session, extra
        return self._session

    async def _send(
        self,
        method: str,
        path: str,
        query: Mapping[str, Any] | None,
        body: Any,
        content_type: str,
        accept: str,
    ) -> aiohttp.ClientResponse:
        """One request on the ApiClient's connection pool, as its ``call_api`` would send it.

        The same URL, headers (its defaults, cookie and ``Authorization``, from its own
        ``update_params_for_auth``, so a refreshed token is what is sent), proxy, TLS
        server name and timeout; the body is encoded once, with ``json.dumps`` as
        ``call_api`` does in the end. ``call_api`` first copies the body value by value
        (``sanitize_for_serialization``, for its generated models; ours are plain JSON,
        which the copy leaves as it was): for the real KubeRay CRDs, 1.9 MB of schema,
        that copy cost each install about 0.3 s of CPU, most of the stand-in's.
        """
        api = self.api
        headers = {"Content-Type": content_type, "Accept": accept, **api.default_headers}
        if api.cookie:
            headers["Cookie"] = api.cookie
        params = [(k, _query_value(v)) for k, v in (query or {}).items() if v is not None]
        await api.update_params_for_auth(headers, params, ["BearerToken"])
        url = f"{api.configuration.host}{path}"
        session, extra = self._session or self._open_session()
        return await session.request(
            method,
            f"{url}?{urlencode(params)}" if params else url,
            data=None if body is None else json.dumps(body),
            headers=headers,
            timeout=aiohttp.ClientTimeout(),
            **extra,
        )

    async def _exchange(
        self,
        method: str,
        path: str,
        query: Mapping[str, Any] | None,
        body: Any,
        content_type: str,
        accept: str,
    ) -> tuple[int, bytes]:
        if self.local is not None:
            params = {k: _query_value(v) for k, v in (query or {}).items() if v is not None}
            data = b"" if body is None else json.dumps(body).encode()
            return await self.local.call(method, path, params, data, content_type)
        resp = await self._send(method, path, query, body, content_type, accept)
        try:
            return resp.status, await resp.read()
        finally:
            resp.release()

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> JSON:
        status, data = await self._exchange(
            method, path, query, body, content_type, "application/json"
        )
        if not 200 <= status < 300:
            raise _error(status, data)
        return json.loads(data) if data else {}

    async def text(self, path: str, query: Mapping[str, Any] | None = None) -> str:
        status, data = await self._exchange(
            "GET", path, query, None, "application/json", "text/plain, application/json"
        )
        if not 200 <= status < 300:
            raise _error(status, data)
        return data.decode(errors="replace")

    async def get(self, path: str, query: Mapping[str, Any] | None = None) -> JSON:
        return await self.request("GET", path, query=query)

    async def get_or_none(self, path: str) -> JSON | None:
        try:
            return await self.get(path)
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    async def create(self, collection: str, body: JSON) -> JSON | None:
        """POST; None when it already exists."""
        try:
            return await self.request("POST", collection, body=body)
        except KubeError as exc:
            if exc.status == 409:
                return None
            raise

    async def merge_patch(self, path: str, body: JSON) -> JSON:
        return await self.request("PATCH", path, body=body, content_type=MERGE_PATCH)

    async def delete(self, path: str, query: Mapping[str, Any] | None = None) -> bool:
        """DELETE; False when it was already gone."""
        try:
            await self.request("DELETE", path, query=query)
            return True
        except KubeError as exc:
            if exc.status == 404:
                return False
            raise

    async def watch(
        self,
        collection: str,
        query: Mapping[str, Any] | None = None,
        resource_version: str | None = None,
        timeout_seconds: int = 60,
    ) -> AsyncIterator[JSON]:
        """One watch request: yields events ``{type, object}`` until the server ends it.

        An ERROR event raises (``Gone`` for 410) so the caller relists.
        """
        q = dict(query or {})
        q.update(watch=True, allowWatchBookmarks=True, timeoutSeconds=timeout_seconds)
        if resource_version:
            q["resourceVersion"] = resource_version
        if self.local is not None:
            params = {k: _query_value(v) for k, v in q.items() if v is not None}
            async for batch in self.local.watch(collection, params):
                for kind, obj in batch:
                    if kind == "ERROR":
                        raise _error(int(obj.get("code", 500)), json.dumps(obj).encode())
                    yield {"type": kind, "object": obj}
            return
        resp = await self._send("GET", collection, q, None, "application/json", "application/json")
        try:
            if not 200 <= resp.status < 300:
                raise _error(resp.status, await resp.read())
            async for line in resp.content:
                if not line.strip():
                    continue
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    obj = event.get("object") or {}
                    raise _error(int(obj.get("code", 500)), json.dumps(obj).encode())
                yield event
        finally:
            resp.release()

    async def wait_gone(self, collection: str, name: str, timeout: float = 60.0) -> None:
        """Return once the named object no longer exists, watching for its DELETED event."""

        async def _wait() -> None:
            while True:
                listing = await self.get(collection, {"fieldSelector": f"metadata.name={name}"})
                if not listing.get("items"):
                    return
                rv = listing["metadata"].get("resourceVersion")
                try:
                    async for event in self.watch(
                        collection, {"fieldSelector": f"metadata.name={name}"}, rv, 10
                    ):
                        if event["type"] == "DELETED":
                            return
                except Gone:
                    continue

        # asyncio.timeout, not wait_for: on Python 3.11 wait_for drops a cancel that lands as
        # the wait ends, and an operator's bring-up waiting here then outlived its delete.
        async with asyncio.timeout(timeout):
            await _wait()


#: libyaml's loader when PyYAML was built with it: the real KubeRay and Dynamo CRDs are
#: tens of thousands of lines, which the pure-Python loader takes seconds to read.
_YAML_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_manifest_cache: dict[tuple[str, int, int], str] = {}


def manifests(path: Path) -> list[JSON]:
    """The non-empty documents of a YAML (or JSON) manifest file, as fresh JSON objects.

    Each install of a stand-in applies the same CRD files again, so a file's documents are
    parsed once per content (path, size and mtime) and kept as JSON text; every call gets
    its own copy, which the caller may change.
    """
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    text = _manifest_cache.get(key)
    if text is None:
        docs = [d for d in yaml.load_all(path.read_text(), Loader=_YAML_LOADER) if d]
        text = _manifest_cache[key] = json.dumps(docs)
    documents: list[JSON] = json.loads(text)
    return documents


def _cluster_name(path: Path) -> str:
    """The current context's cluster name, which KubeFoundry reports as ``clusterName``."""
    try:
        doc = yaml.safe_load(path.read_text()) or {}
        current = doc.get("current-context")
        for ctx in doc.get("contexts") or []:
            if ctx.get("name") == current:
                return str(ctx["context"]["cluster"])
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        pass
    return ""


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _error(status: int, data: bytes) -> KubeError:
    message, reason = data.decode(errors="replace"), ""
    try:
        obj = json.loads(data)
        message, reason = obj.get("message", message), obj.get("reason", "")
    except ValueError:
        pass
    cls = Gone if status == 410 else KubeError
    return cls(status, message, reason)


def backoff(attempt: int, cap: float = 5.0) -> float:
    """Exponential backoff with jitter for reconnecting watches."""
    return min(cap, 0.1 * 2.0**attempt) * (0.5 + random.random() / 2)
