"""The aiohttp application: routing of Kubernetes REST paths onto the store, watch streams, logs, proxy."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, cast

import aiohttp
import yaml
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy

from . import _discovery as discovery
from . import _errors as errors
from ._clone import clone
from ._faults import KubeFaults
from ._logs import PodLogs, container_status, parse_time, render
from ._patch import apply_patch
from ._proxy import forward, resolve
from ._resources import ResourceType, builtin_types, types_from_crd
from ._selectors import FieldSelector, LabelSelector
from ._store import Event, Store, Watcher, now_rfc3339

CRD_KEY = "apiextensions.k8s.io/customresourcedefinitions"


@dataclass
class _Target:
    """A parsed resource path."""

    rt: ResourceType
    namespace: str
    name: str
    sub: str
    rest: str


class Registry:
    """Served resource types by (group, version, plural); CRDs add and remove theirs."""

    def __init__(self) -> None:
        self._types: dict[tuple[str, str, str], ResourceType] = {}
        for rt in builtin_types():
            self.add(rt)

    def add(self, rt: ResourceType) -> None:
        self._types[(rt.group, rt.version, rt.plural)] = rt

    def remove(self, group: str, plural: str) -> list[ResourceType]:
        gone = [rt for k, rt in self._types.items() if k[0] == group and k[2] == plural]
        for rt in gone:
            del self._types[(rt.group, rt.version, rt.plural)]
        return gone

    def find(self, group: str, version: str, plural: str) -> ResourceType | None:
        return self._types.get((group, version, plural))

    def core(self, plural: str) -> ResourceType:
        return self._types[("", "v1", plural)]

    def in_group_version(self, group: str, version: str) -> list[ResourceType]:
        return [rt for (g, v, _), rt in self._types.items() if g == group and v == version]

    def groups(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for g, v, _ in self._types:
            if g and v not in out.setdefault(g, []):
                out[g].append(v)
        return out


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=json.dumps(body, separators=(",", ":")).encode(),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def _status_success(rt: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
    details: dict[str, Any] = {"name": obj["metadata"]["name"]}
    if rt.group:
        details["group"] = rt.group
    details["kind"] = rt.plural
    details["uid"] = obj["metadata"].get("uid", "")
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": details,
    }


def _int_param(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise errors.bad_request(
            f'invalid value for {name}: strconv.ParseInt: parsing "{raw}": invalid syntax'
        ) from None


class _LocalRequest:
    """What the routes read of an aiohttp request, for a call made in-process (``ApiServer.call``)."""

    def __init__(
        self, method: str, path: str, query: Mapping[str, str], body: bytes, content_type: str
    ) -> None:
        self.method = method
        self.path = path
        self.query = MultiDictProxy(MultiDict(query))
        self.headers = CIMultiDictProxy(CIMultiDict({"Content-Type": content_type}))
        self.content_type = content_type.split(";", 1)[0].strip()
        self._body = body

    async def read(self) -> bytes:
        return self._body


def _truthy(request: web.Request, name: str) -> bool:
    return request.query.get(name, "").lower() in ("1", "true", "yes")


class ApiServer:
    """Owns the store, the registry, the fake kubelet's logs and the HTTP routes."""

    def __init__(
        self,
        store: Store,
        registry: Registry,
        logs: PodLogs,
        faults: KubeFaults,
        graceful_pods: bool = True,
    ) -> None:
        self.store = store
        self.registry = registry
        self.logs = logs
        self.faults = faults
        self.graceful_pods = graceful_pods
        self.server_address = ""
        self._session: aiohttp.ClientSession | None = None
        self._streams: set[asyncio.Task[Any]] = set()
        store.add_listener(self._on_event)

    async def call(
        self,
        method: str,
        path: str,
        query: Mapping[str, str] | None = None,
        body: bytes = b"",
        content_type: str = "application/json",
    ) -> tuple[int, bytes]:
        """One request served in-process: the status and body an HTTP client would get.

        The sandbox's own controllers live in this process; over loopback HTTP, each of
        their calls cost a client, a server and four socket operations, most of the
        sandbox's CPU with fifty deployments. The same routes answer them here, so the
        semantics (selectors, subresources, finalizers, faults) are the API's. Streaming
        requests (watches, the service proxy, followed logs) still need HTTP.
        """
        query = dict(query or {})
        if (
            query.get("watch", "").lower() in ("1", "true")
            or query.get("follow", "").lower() in ("1", "true")
            or "/proxy" in path
        ):
            raise ValueError(f"{method} {path}: a streaming request needs HTTP")
        request = _LocalRequest(method, path, query, body, content_type)
        response = await self._dispatch(request)  # type: ignore[arg-type]
        if not isinstance(response, web.Response):
            raise ValueError(f"{method} {path}: answered with a stream; it needs HTTP")
        body_out = response.body
        return response.status, body_out if isinstance(body_out, bytes) else b""

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        app.on_startup.append(self._startup)
        app.on_cleanup.append(self._cleanup)
        return app

    async def _startup(self, _: web.Application) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, connect=10),
            trust_env=False,
        )

    async def _cleanup(self, _: web.Application) -> None:
        if self._session is not None:
            await self._session.close()

    # -- CRDs --------------------------------------------------------------------

    def _on_event(self, ev: Event) -> None:
        if ev.key != CRD_KEY or ev.type != "DELETED":
            return
        spec = ev.obj.get("spec") or {}
        for rt in self.registry.remove(
            spec.get("group", ""), (spec.get("names") or {}).get("plural", "")
        ):
            self.store.drop_type(rt)

    def _establish(self, crd: dict[str, Any]) -> dict[str, Any]:
        """Register the CRD's resources and report it Established, as the apiextensions controllers would."""
        spec = crd.get("spec") or {}
        now = now_rfc3339()
        crd["status"] = {
            "conditions": [
                {
                    "type": "NamesAccepted",
                    "status": "True",
                    "lastTransitionTime": now,
                    "reason": "NoConflicts",
                    "message": "no conflicts found",
                },
                {
                    "type": "Established",
                    "status": "True",
                    "lastTransitionTime": now,
                    "reason": "InitialNamesAccepted",
                    "message": "the initial names have been accepted",
                },
            ],
            "acceptedNames": spec.get("names") or {},
            "storedVersions": [v["name"] for v in spec.get("versions") or [] if v.get("storage")],
        }
        crds = self.registry.find("apiextensions.k8s.io", "v1", "customresourcedefinitions")
        assert crds is not None
        stored = self.store.update(crds, "", crd["metadata"]["name"], crd, status_only=True)
        busy = asyncio.get_running_loop().time() + self.faults.too_many_requests_after_crd
        for rt in types_from_crd(stored):
            existing = self.registry.find(rt.group, rt.version, rt.plural)
            rt.created_rv = existing.created_rv if existing else self.store.rv
            rt.busy_until = busy if self.faults.too_many_requests_after_crd > 0 else 0.0
            self.registry.add(rt)
        return stored

    def _check_crd(self, crd: dict[str, Any]) -> None:
        spec = crd.get("spec") or {}
        names = spec.get("names") or {}
        want = f"{names.get('plural', '')}.{spec.get('group', '')}"
        name = (crd.get("metadata") or {}).get("name", "")
        if name != want:
            raise errors.invalid(
                "CustomResourceDefinition",
                name,
                "metadata.name",
                "FieldValueInvalid",
                f'Invalid value: "{name}": must be spec.names.plural+"."+spec.group',
                "apiextensions.k8s.io",
            )

    # -- routing -------------------------------------------------------------------

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._route(request)
        except errors.ApiError as err:
            return _json(err.status(), err.code, err.headers)
        except (json.JSONDecodeError, yaml.YAMLError) as err:
            return _json(
                errors.bad_request(f"the body of the request could not be decoded: {err}").status(),
                400,
            )

    async def _route(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        segs = [s for s in path.split("/") if s]
        if path in ("/healthz", "/readyz", "/livez"):
            return web.Response(text="ok")
        if path == "/version":
            return _json(discovery.VERSION)
        if not segs:
            return _json(
                {"paths": ["/api", "/api/v1", "/apis", "/healthz", "/livez", "/readyz", "/version"]}
            )
        if segs[0] == "api":
            if len(segs) == 1:
                return _json(discovery.api_versions(self.server_address))
            if segs[1] != "v1":
                raise errors.ApiError(
                    404, "NotFound", "the server could not find the requested resource"
                )
            if len(segs) == 2:
                return _json(
                    discovery.resource_list("v1", self.registry.in_group_version("", "v1"))
                )
            return await self._resource(request, "", "v1", segs[2:])
        if segs[0] == "apis":
            if len(segs) == 1:
                return _json(discovery.api_group_list(self.registry.groups()))
            groups = self.registry.groups()
            if len(segs) == 2:
                if segs[1] not in groups:
                    raise errors.ApiError(
                        404, "NotFound", "the server could not find the requested resource"
                    )
                return _json(discovery.api_group(segs[1], groups[segs[1]]))
            if len(segs) == 3:
                if segs[2] not in groups.get(segs[1], []):
                    raise errors.ApiError(
                        404, "NotFound", "the server could not find the requested resource"
                    )
                return _json(
                    discovery.resource_list(
                        f"{segs[1]}/{segs[2]}", self.registry.in_group_version(segs[1], segs[2])
                    )
                )
            return await self._resource(request, segs[1], segs[2], segs[3:])
        raise errors.ApiError(404, "NotFound", "the server could not find the requested resource")

    def _target(self, group: str, version: str, segs: list[str]) -> _Target:
        namespace = ""
        if segs[0] == "namespaces" and len(segs) >= 3 and segs[2] not in ("status", "finalize"):
            namespace, segs = segs[1], segs[2:]
        rt = self.registry.find(group, version, segs[0])
        if rt is None or (namespace and not rt.namespaced):
            raise errors.ApiError(
                404, "NotFound", "the server could not find the requested resource"
            )
        name = segs[1] if len(segs) > 1 else ""
        sub = segs[2] if len(segs) > 2 else ""
        rest = "/".join(segs[3:])
        if sub and sub not in rt.subresources:
            raise errors.ApiError(
                404, "NotFound", "the server could not find the requested resource"
            )
        return _Target(rt, namespace, name, sub, rest)

    async def _resource(
        self, request: web.Request, group: str, version: str, segs: list[str]
    ) -> web.StreamResponse:
        t = self._target(group, version, segs)
        m = request.method
        if t.sub == "proxy":
            return await self._proxy(request, t)
        if t.sub == "log":
            if m != "GET":
                raise errors.method_not_allowed(
                    "the server does not allow this method on the requested resource"
                )
            return await self._log(request, t)
        if not t.name:
            if m == "GET":
                return (
                    await self._watch(request, t)
                    if _truthy(request, "watch")
                    else self._list(request, t)
                )
            if m == "POST":
                return await self._create(request, t)
            if m == "DELETE":
                return self._delete_collection(request, t)
            raise errors.method_not_allowed(
                "the server does not allow this method on the requested resource"
            )
        status_only = t.sub == "status"
        if m == "GET":
            return _json(self.store.get(t.rt, t.namespace, t.name))
        if m == "PUT":
            body = await self._body(request)
            return _json(
                self.store.update(t.rt, t.namespace, t.name, body, status_only=status_only)
            )
        if m == "PATCH":
            return await self._patch(request, t, status_only)
        if m == "DELETE" and not t.sub:
            return await self._delete(request, t)
        raise errors.method_not_allowed(
            "the server does not allow this method on the requested resource"
        )

    async def _body(self, request: web.Request) -> dict[str, Any]:
        raw = await request.read()
        if "yaml" in request.content_type:
            data = yaml.safe_load(raw or b"{}")
        else:
            data = json.loads(raw or b"{}")
        return cast(dict[str, Any], data)

    # -- verbs -----------------------------------------------------------------------

    def _busy(self, rt: ResourceType) -> None:
        if rt.busy_until and asyncio.get_running_loop().time() < rt.busy_until:
            raise errors.too_many_requests()

    def _selectors(
        self, request: web.Request, rt: ResourceType
    ) -> tuple[LabelSelector, FieldSelector]:
        return (
            LabelSelector(request.query.get("labelSelector")),
            FieldSelector(request.query.get("fieldSelector"), rt.selectable_fields()),
        )

    def _list(self, request: web.Request, t: _Target) -> web.Response:
        if self.faults.too_many_requests_lists:
            self._busy(t.rt)
        labels, fields = self._selectors(request, t.rt)
        items, rv = self.store.list(t.rt, t.namespace, labels, fields)
        if t.rt.group == "":
            for item in items:
                item.pop("apiVersion", None)
                item.pop("kind", None)
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        limit = _int_param(request, "limit")
        start = 0
        token = request.query.get("continue")
        if token:
            try:
                start = int(token)
            except ValueError:
                raise errors.bad_request(
                    "continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)"
                ) from None
        if limit and limit > 0:
            page = items[start : start + limit]
            if start + limit < len(items):
                meta["continue"] = str(start + limit)
                meta["remainingItemCount"] = len(items) - start - limit
            items = page
        elif start:
            items = items[start:]
        return _json(
            {
                "kind": t.rt.list_kind,
                "apiVersion": t.rt.api_version,
                "metadata": meta,
                "items": items,
            }
        )

    async def _create(self, request: web.Request, t: _Target) -> web.Response:
        body = await self._body(request)
        if not isinstance(body, dict):
            raise errors.bad_request("the body of the request is not an object")
        if t.rt.key == CRD_KEY:
            self._check_crd(body)
        if t.rt.group:
            body["apiVersion"], body["kind"] = t.rt.api_version, t.rt.kind
        created = self.store.create(t.rt, t.namespace, body)
        if t.rt.key == CRD_KEY:
            # Answer like the real server (no conditions yet); the Established update follows at once.
            self._establish(self.store.get(t.rt, "", created["metadata"]["name"]))
        return _json(created, 201)

    async def _patch(self, request: web.Request, t: _Target, status_only: bool) -> web.Response:
        raw = await request.read()
        content_type = request.headers.get("Content-Type", "")
        patch = yaml.safe_load(raw) if "yaml" in content_type else json.loads(raw or b"null")
        current = self.store.get(t.rt, t.namespace, t.name)
        patched = apply_patch(current, content_type, patch)
        if not isinstance(patched, dict):
            raise errors.bad_request("the patch did not produce an object")
        return _json(self.store.update(t.rt, t.namespace, t.name, patched, status_only=status_only))

    async def _delete(self, request: web.Request, t: _Target) -> web.Response:
        raw = await request.read()
        opts = json.loads(raw) if raw.strip() else {}
        grace = opts.get("gracePeriodSeconds")
        if grace is None:
            grace = _int_param(request, "gracePeriodSeconds")
        uid = ((opts.get("preconditions") or {}).get("uid")) or None
        obj, gone = self.store.delete(
            t.rt, t.namespace, t.name, grace=grace, uid=uid, graceful_pods=self.graceful_pods
        )
        if gone:
            return _json(_status_success(t.rt, obj))
        return _json(obj)

    def _delete_collection(self, request: web.Request, t: _Target) -> web.Response:
        labels, fields = self._selectors(request, t.rt)
        items, _ = self.store.list(t.rt, t.namespace, labels, fields)
        out = []
        for item in items:
            meta = item["metadata"]
            try:
                obj, _ = self.store.delete(
                    t.rt, meta.get("namespace", ""), meta["name"], graceful_pods=self.graceful_pods
                )
                out.append(obj)
            except errors.ApiError:
                pass
        return _json(
            {
                "kind": t.rt.list_kind,
                "apiVersion": t.rt.api_version,
                "metadata": {"resourceVersion": str(self.store.rv)},
                "items": out,
            }
        )

    # -- watch -----------------------------------------------------------------------

    async def _watch(self, request: web.Request, t: _Target) -> web.StreamResponse:
        batches = self._watch_batches(request, t)
        await anext(batches)  # errors before the stream opens are plain error answers
        resp = web.StreamResponse(
            status=200,
            headers={"Content-Type": "application/json", "Cache-Control": "no-cache, private"},
        )
        resp.enable_chunked_encoding()
        try:
            await resp.prepare(request)
            # Each batch (what was queued when the watcher woke) goes out in one write:
            # one send for a burst of events instead of one each.
            async for batch in batches:
                await resp.write(b"".join(_event_line(kind, obj) for kind, obj in batch))
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            await batches.aclose()
        try:
            await resp.write_eof()
        except (ConnectionResetError, RuntimeError):
            pass
        return resp

    async def _watch_batches(
        self, request: web.Request | _LocalRequest, t: _Target
    ) -> AsyncGenerator[list[tuple[str, dict[str, Any]]], None]:
        """One watch request's events, a batch per wake-up, for HTTP and in-process watches.

        The first batch is empty and comes at once, once the request has been accepted:
        a bad request raises before it, as a plain error answer.
        """
        self._busy(t.rt)
        labels, fields = self._selectors(request, t.rt)  # type: ignore[arg-type]
        raw_rv = request.query.get("resourceVersion", "")
        since: int | None = None
        if raw_rv not in ("", "0"):
            try:
                since = int(raw_rv)
            except ValueError:
                raise errors.bad_request(f'invalid resource version "{raw_rv}"') from None
        error: errors.ApiError | None = None
        watcher: Watcher | None = None
        if self.faults.gone_once and _gone_target_matches(self.faults.gone_label_selector, request):  # type: ignore[arg-type]
            self.faults.gone_once = False
            error = errors.expired(f"too old resource version: {raw_rv or 0} ({self.store.rv})")
        else:
            try:
                watcher = self.store.watch(t.rt, t.namespace, since, labels, fields)
            except errors.ApiError as err:
                if err.code != 410:
                    raise
                error = err
        try:
            yield []
            if error is not None:
                yield [("ERROR", error.status())]
                return
            assert watcher is not None
            timeout = _int_param(request, "timeoutSeconds")  # type: ignore[arg-type]
            limit = float(timeout) if timeout and timeout > 0 else 1800.0 * (1 + random.random())
            if self.faults.watch_cut_after is not None:
                limit = min(limit, self.faults.watch_cut_after)
            deadline = asyncio.get_running_loop().time() + limit
            bookmarks = _truthy(request, "allowWatchBookmarks")  # type: ignore[arg-type]
            while True:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                try:
                    # asyncio.timeout, not wait_for: see Kube.wait_gone.
                    async with asyncio.timeout(min(remaining, 60.0) if bookmarks else remaining):
                        item = await watcher.queue.get()
                except TimeoutError:
                    if bookmarks and deadline > asyncio.get_running_loop().time():
                        yield [
                            (
                                "BOOKMARK",
                                {
                                    "kind": t.rt.kind,
                                    "apiVersion": t.rt.api_version,
                                    "metadata": {"resourceVersion": str(self.store.rv)},
                                },
                            )
                        ]
                    continue
                if item is None:
                    break
                batch = [item]
                ended = False
                while not watcher.queue.empty():
                    more = watcher.queue.get_nowait()
                    if more is None:
                        ended = True
                        break
                    batch.append(more)
                yield batch
                if ended:
                    break
        finally:
            if watcher is not None:
                self.store.unwatch(watcher)

    async def watch(
        self, path: str, query: Mapping[str, str]
    ) -> AsyncIterator[list[tuple[str, dict[str, Any]]]]:
        """A watch served in-process: the batches of events ``_watch`` would send, each
        object a copy of its own, as a client decoding the HTTP stream would have."""
        segs = [seg for seg in path.split("/") if seg]
        request = _LocalRequest("GET", path, {**query, "watch": "true"}, b"", "application/json")
        try:
            if segs[:2] == ["api", "v1"] and len(segs) > 2:
                group, version, rest = "", "v1", segs[2:]
            elif segs[:1] == ["apis"] and len(segs) > 3:
                group, version, rest = segs[1], segs[2], segs[3:]
            else:
                raise errors.ApiError(
                    404, "NotFound", "the server could not find the requested resource"
                )
            batches = self._watch_batches(request, self._target(group, version, rest))
            await anext(batches)
        except errors.ApiError as err:  # over HTTP: an error answer instead of a stream
            yield [("ERROR", err.status())]
            return
        try:
            async for batch in batches:
                yield [(kind, clone(obj)) for kind, obj in batch]
        finally:
            await batches.aclose()

    # -- pods/log ----------------------------------------------------------------------

    async def _log(self, request: web.Request, t: _Target) -> web.StreamResponse:
        pod = self.store.get(t.rt, t.namespace, t.name)
        tail = _int_param(request, "tailLines")
        limit = _int_param(request, "limitBytes")
        since_s = _int_param(request, "sinceSeconds")
        since_time = parse_time(request.query.get("sinceTime"))
        causes = []
        if tail is not None and tail < 0:
            causes.append(
                ("tailLines", f"Invalid value: {tail}: must be greater than or equal to 0")
            )
        if limit is not None and limit < 1:
            causes.append(("limitBytes", f"Invalid value: {limit}: must be greater than 0"))
        if since_s is not None and since_s < 1:
            causes.append(("sinceSeconds", f"Invalid value: {since_s}: must be greater than 0"))
        if causes:
            field, text = causes[0]
            raise errors.invalid("PodLogOptions", "", field, "FieldValueInvalid", text)
        container = self._log_container(pod, request.query.get("container", ""))
        if not (pod.get("spec") or {}).get("nodeName"):
            return web.Response(status=204)
        previous = _truthy(request, "previous")
        self._log_state(pod, container, previous)
        since = since_time
        if since_s is not None:
            since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=since_s)
        timestamps = _truthy(request, "timestamps")
        lines = self.logs.lines(pod, container)
        if not _truthy(request, "follow"):
            body = render(lines, timestamps=timestamps, tail=tail, since=since, limit_bytes=limit)
            return web.Response(body=body, content_type="text/plain")
        return await self._follow(request, t, pod, container, lines, timestamps, tail, since, limit)

    async def _follow(
        self,
        request: web.Request,
        t: _Target,
        pod: dict[str, Any],
        container: str,
        lines: list[Any],
        timestamps: bool,
        tail: int | None,
        since: dt.datetime | None,
        limit: int | None,
    ) -> web.StreamResponse:
        """Stream the current lines, then new ones as the pod changes, until the container is done."""
        resp = web.StreamResponse(status=200, headers={"Content-Type": "text/plain"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        left = limit
        seen = len(lines)

        async def emit(chunk: bytes) -> bool:
            nonlocal left
            if left is not None:
                chunk = chunk[:left]
                left -= len(chunk)
            await resp.write(chunk)
            return left is None or left > 0

        uid = pod["metadata"]["uid"]
        try:
            if await emit(render(lines, timestamps=timestamps, tail=tail, since=since)):
                done = False
                while True:
                    changed = self.logs.changed()
                    current = self.store.peek(t.rt, t.namespace, t.name)
                    gone = current is None or current["metadata"].get("uid") != uid
                    if not gone:
                        pod = current  # type: ignore[assignment]
                    now_lines = self.logs.lines(pod, container)
                    if len(now_lines) > seen:
                        if not await emit(render(now_lines[seen:], timestamps=timestamps)):
                            break
                        seen = len(now_lines)
                    if done or gone:
                        break
                    st = container_status(pod, container) or {}
                    phase = (pod.get("status") or {}).get("phase")
                    # The instance followed is over once no instance runs: a kubelet
                    # ends the stream of an exited one (a crash loop's last, too).
                    done = phase in ("Succeeded", "Failed") or "running" not in (
                        st.get("state") or {}
                    )
                    if not done:
                        await changed.wait()
            await resp.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return resp

    @staticmethod
    def _log_container(pod: dict[str, Any], container: str) -> str:
        spec = pod.get("spec") or {}
        names = [
            c["name"] for c in (spec.get("initContainers") or []) + (spec.get("containers") or [])
        ]
        name = pod["metadata"]["name"]
        if not container:
            containers = spec.get("containers") or []
            if len(containers) == 1:
                return str(containers[0]["name"])
            if not containers:
                raise errors.bad_request(f"a container name must be specified for pod {name}")
            raise errors.bad_request(
                f"a container name must be specified for pod {name}, choose one of: [{' '.join(names)}]"
            )
        if container not in names:
            raise errors.bad_request(f"container {container} is not valid for pod {name}")
        return container

    @staticmethod
    def _log_state(pod: dict[str, Any], container: str, previous: bool) -> None:
        """Which instance's log a kubelet serves, in its order (validateContainerLogStatus):
        ``previous`` the last terminated one; else the running one, the terminated one,
        and for a container waiting to restart (CrashLoopBackOff) the one that last
        exited, the same instance ``previous`` gives then. Only a container that never
        ran has no log. Container IDs are not checked (every instance a kubelet reports
        as having run carries one), and the lines of all instances are one log here."""
        name = pod["metadata"]["name"]
        st = container_status(pod, container)
        if st is None:
            raise errors.bad_request(
                f'container "{container}" in pod "{name}" is waiting to start: ContainerCreating'
            )
        state = st.get("state") or {}
        last_terminated = (st.get("lastState") or {}).get("terminated")
        if previous:
            if not last_terminated:
                raise errors.bad_request(
                    f'previous terminated container "{container}" in pod "{name}" not found'
                )
            return
        if "running" in state or "terminated" in state or last_terminated:
            return
        if "waiting" in state:
            reason = (state.get("waiting") or {}).get("reason", "")
            raise errors.bad_request(
                f'container "{container}" in pod "{name}" is waiting to start: {reason}'
            )
        raise errors.bad_request(
            f'container "{container}" in pod "{name}" is waiting to start - no logs yet'
        )

    # -- services/proxy ---------------------------------------------------------------

    async def _proxy(self, request: web.Request, t: _Target) -> web.StreamResponse:
        assert self._session is not None
        base = resolve(self.store, t.rt, t.namespace, t.name)
        # The decoded path after ".../proxy", trailing slash included (clients may send "/" as %2F).
        decoded = request.path
        start = decoded.find(f"/services/{t.name}/proxy")
        path = decoded[start + len(f"/services/{t.name}/proxy") :] if start >= 0 else t.rest
        return await forward(request, self._session, base, path)


def _gone_target_matches(target: str | None, request: web.Request) -> bool:
    """Which watch a forced 410 goes to: any (None), one with exactly this labelSelector,
    or, as ``path=/api/v1/...``, an unfiltered watch of that collection (the kind a client
    that shares one stream per namespace opens)."""
    if target is None:
        return True
    if target.startswith("path="):
        return (
            request.path == target[5:]
            and not request.query.get("labelSelector")
            and not request.query.get("fieldSelector")
        )
    return target == request.query.get("labelSelector")


def _event_line(kind: str, obj: dict[str, Any]) -> bytes:
    """One watch event as the API server sends it: a JSON object on a line of its own."""
    return json.dumps({"type": kind, "object": obj}, separators=(",", ":")).encode() + b"\n"
