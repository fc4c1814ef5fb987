"""A small Kubernetes client over kubernetes-asyncio's transport.

kubernetes-asyncio brings what is hard to get right (kubeconfig loading, client
certificates, exec credential plugins, TLS); on top of it this module speaks
raw JSON paths. Pods, Services, Events and custom resources such as KAITO
Workspaces then share one code path for get, list, watch, patch and delete,
and the flow reads plain dictionaries shaped as ``kubectl get -o json`` shows
them.

kubernetes-asyncio is imported lazily: importing it costs most of a second,
which ``--help`` and ``--version`` should not pay.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from ._errors import RequestTimeout, TooManyRequests, TransportError, status_error

if TYPE_CHECKING:  # pragma: no cover
    from kubernetes_asyncio.client import ApiClient


@dataclass(frozen=True)
class Resource:
    """A resource type: ``Resource("", "v1", "pods")``, ``Resource("kaito.sh", "v1beta1", "workspaces")``."""

    group: str
    version: str
    plural: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(
        self, namespace: str | None = None, name: str | None = None, subresource: str | None = None
    ) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{quote(namespace, safe='')}"
        base += f"/{self.plural}"
        if name:
            base += f"/{quote(name, safe='')}"
        if subresource:
            base += f"/{subresource}"
        return base


PODS = Resource("", "v1", "pods")
SERVICES = Resource("", "v1", "services")
EVENTS = Resource("", "v1", "events")
NAMESPACES = Resource("", "v1", "namespaces", namespaced=False)
CRDS = Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions", namespaced=False)


def _status_message(body: Any, fallback: str) -> str:
    if isinstance(body, dict) and isinstance(message := body.get("message"), str):
        return message
    if isinstance(body, str) and body.strip():
        return body.strip()[:300]
    return fallback


class KubeClient:
    """Raw-JSON access to one cluster. Build it with :meth:`from_kubeconfig`."""

    def __init__(self, api: ApiClient) -> None:
        self._api = api
        self.requests_sent = 0
        self.watches_opened = 0

    @staticmethod
    def preload() -> None:
        """Import kubernetes-asyncio now rather than at the first connection."""
        import kubernetes_asyncio.client
        import kubernetes_asyncio.config  # noqa: F401

    @classmethod
    async def from_kubeconfig(
        cls, path: str | None = None, *, context: str | None = None
    ) -> KubeClient:
        from kubernetes_asyncio import client, config

        cfg = client.Configuration()
        await config.load_kube_config(config_file=path, context=context, client_configuration=cfg)
        return cls(client.ApiClient(configuration=cfg))

    @property
    def server(self) -> str:
        return str(self._api.configuration.host)

    async def aclose(self) -> None:
        await self._api.close()

    async def __aenter__(self) -> KubeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- plumbing ---------------------------------------------------------

    async def open(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, Any] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        accept: str = "application/json, */*",
        timeout: Any = None,
    ) -> Any:
        """Send a request and return the raw aiohttp response (the caller reads and releases it)."""
        import aiohttp

        self.requests_sent += 1
        headers = {"Content-Type": content_type, "Accept": accept}
        params = [(k, _query_value(v)) for k, v in (query or {}).items() if v is not None]
        try:
            return await self._api.call_api(
                path,
                method,
                query_params=params,
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=timeout,
            )
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise RequestTimeout(
                f"{method} {path}: no answer in time ({type(exc).__name__})",
                method=method,
                url=path,
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise TransportError(
                f"{method} {path}: {type(exc).__name__}: {exc}", method=method, url=path
            ) from None

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send a request; return the decoded body of a 2xx, raise the matching error otherwise."""
        import aiohttp

        response = await self.open(method, path, **kwargs)
        try:
            try:
                raw = await response.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise TransportError(
                    f"{method} {path}: reading the answer failed: {exc!r}", method=method, url=path
                ) from None
            text = raw.decode("utf-8", errors="replace")
            try:
                body: Any = json.loads(text) if text else None
            except ValueError:
                body = text
            if not 200 <= response.status < 300:
                err = status_error(
                    response.status,
                    _status_message(body, f"HTTP {response.status}"),
                    method=method,
                    path=path,
                    body=body,
                )
                if isinstance(err, TooManyRequests):
                    err.retry_after = _retry_after(response.headers)
                raise err
            return body
        finally:
            response.release()

    # -- verbs ------------------------------------------------------------

    async def get(self, res: Resource, name: str, namespace: str | None = None) -> dict[str, Any]:
        obj: dict[str, Any] = await self.request("GET", res.path(namespace, name))
        return obj

    async def list(
        self,
        res: Resource,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        listing: dict[str, Any] = await self.request(
            "GET",
            res.path(namespace),
            timeout=timeout,
            query={"labelSelector": label_selector, "fieldSelector": field_selector},
        )
        return listing

    async def create(
        self, res: Resource, body: dict[str, Any], namespace: str | None = None
    ) -> dict[str, Any]:
        created: dict[str, Any] = await self.request("POST", res.path(namespace), body=body)
        return created

    async def patch(
        self,
        res: Resource,
        name: str,
        body: dict[str, Any],
        namespace: str | None = None,
        *,
        subresource: str | None = None,
    ) -> dict[str, Any]:
        patched: dict[str, Any] = await self.request(
            "PATCH",
            res.path(namespace, name, subresource),
            body=body,
            content_type="application/merge-patch+json",
        )
        return patched

    async def delete(
        self,
        res: Resource,
        name: str,
        namespace: str | None = None,
        *,
        grace_period: int | None = None,
    ) -> Any:
        body: dict[str, Any] = {
            "kind": "DeleteOptions",
            "apiVersion": "v1",
            "propagationPolicy": "Background",
        }
        if grace_period is not None:
            body["gracePeriodSeconds"] = grace_period
        return await self.request("DELETE", res.path(namespace, name), body=body)

    async def pod_log(
        self,
        name: str,
        namespace: str,
        *,
        container: str | None = None,
        tail_lines: int | None = None,
        previous: bool = False,
        limit_bytes: int | None = None,
    ) -> str:
        body = await self.request(
            "GET",
            PODS.path(namespace, name, "log"),
            accept="text/plain, application/json, */*",
            query={
                "container": container,
                "tailLines": tail_lines,
                "previous": "true" if previous else None,
                "limitBytes": limit_bytes,
            },
        )
        return body if isinstance(body, str) else ("" if body is None else json.dumps(body))

    def service_proxy_path(self, namespace: str, service: str, port: int | str, path: str) -> str:
        return (
            f"/api/v1/namespaces/{quote(namespace, safe='')}/services/"
            f"{quote(service, safe='')}:{port}/proxy/{path.lstrip('/')}"
        )

    async def watch_stream(
        self,
        res: Resource,
        namespace: str | None = None,
        *,
        resource_version: str | None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        server_timeout: int = 60,
        client_timeout: float | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """One watch connection: yield raw events until the server ends the stream.

        Both timeouts are set: ``timeoutSeconds`` asks the server to end the
        stream cleanly, and the client's read timeout catches a server or a
        network that silently stops talking (a half-open connection would
        otherwise hang the watcher forever).
        """
        import aiohttp

        client_timeout = client_timeout or server_timeout + 15
        response = await self.open(
            "GET",
            res.path(namespace),
            query={
                "watch": "true",
                "resourceVersion": resource_version,
                "allowWatchBookmarks": "true",
                "timeoutSeconds": server_timeout,
                "labelSelector": label_selector,
                "fieldSelector": field_selector,
            },
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=client_timeout),
        )
        self.watches_opened += 1
        try:
            if response.status != 200:
                raw = await response.read()
                try:
                    body: Any = json.loads(raw)
                except ValueError:
                    body = raw.decode("utf-8", "replace")
                err = status_error(
                    response.status,
                    _status_message(body, f"HTTP {response.status}"),
                    method="GET",
                    path=res.path(namespace),
                    body=body,
                )
                if isinstance(err, TooManyRequests):
                    err.retry_after = _retry_after(response.headers)
                raise err
            try:
                async for line in response.content:
                    line = line.strip()
                    if line:
                        yield json.loads(line)
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise TransportError(
                    f"watch {res.plural}: stream broke: {type(exc).__name__}: {exc}",
                    method="GET",
                    url=res.path(namespace),
                ) from None
        finally:
            response.release()


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _retry_after(headers: Any) -> float | None:
    try:
        return float(headers.get("Retry-After", ""))
    except (TypeError, ValueError):
        return None
