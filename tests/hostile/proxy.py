"""A hostile peer: an HTTP proxy on loopback that misbehaves on purpose.

It sits in front of one peer of the orchestrator (the Kubernetes API, whose service
proxy also carries the model's traffic; the KubeFoundry backend; or a model server)
and forwards every request, except those a :class:`Mutation` matches: those it
answers the way a broken, slow or malicious peer would. The mutations are named
(:data:`STRATEGIES`), so a test says what it does in one word, and a hypothesis
strategy (:func:`plans`) draws random combinations of them for the randomized mode.

    async with HostileProxy("http://127.0.0.1:8080") as proxy:
        proxy.add(Mutation("garbage_lines", watch=True))
        ...  # point the client at proxy.url
        assert proxy.applied  # which mutations hit which requests

For the Kubernetes API, :meth:`HostileProxy.for_kubeconfig` reads a kubeconfig,
proxies its server (over TLS with the kubeconfig's CA and client certificate when
it has them) and writes a kubeconfig that points at the proxy, with the same
credentials, so the bearer token crosses the proxy as it would cross any network.

The proxy is test code: it is independent of the orchestrator's clients, so that
their bugs cannot hide in it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import re
import ssl
import sys
import tempfile
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web
from hypothesis import strategies as st

#: Lines a garbage-spewing watch stream interleaves with the real events: not JSON,
#: JSON that is not an object, objects of the wrong shape, an unknown event type.
GARBAGE_LINES = [
    b"this is not json",
    b'{"type": "ADDED", "object": ',
    b"[1, 2, 3]",
    b'"just a string"',
    b'{"type": "ADDED", "object": "not an object"}',
    b'{"type": "MODIFIED", "object": {"metadata": "not a map"}}',
    b'{"type": "DELETED", "object": {"metadata": {"name": 42}}}',
    b'{"type": "SURPRISE", "object": {}}',
    b'{"type": [], "object": {}}',
    b"\xff\xfe\x00 binary",
]

ERROR_EVENT = (
    b'{"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", '
    b'"status": "Failure", "message": "injected by the hostile proxy", "code": 500}}'
)


@dataclass
class Mutation:
    """One named misbehaviour, for the requests it matches.

    ``path`` is a regular expression searched in the request's path (with its query),
    ``watch`` limits it to watch requests (True) or to the others (False), ``times`` is
    how many requests it hits (None: every one), ``params`` tune the strategy.
    """

    name: str
    path: str = ""
    method: str | None = None
    watch: bool | None = None
    times: int | None = 1
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name not in STRATEGIES:
            raise ValueError(f"unknown mutation {self.name!r}; known: {', '.join(STRATEGIES)}")

    def matches(self, request: web.Request, is_watch: bool) -> bool:
        if self.times is not None and self.times <= 0:
            return False
        if self.method is not None and request.method != self.method:
            return False
        if self.watch is not None and self.watch != is_watch:
            return False
        return not self.path or re.search(self.path, request.path_qs) is not None


@dataclass
class Exchange:
    """What the proxy is handling: the client's request, and the way upstream."""

    request: web.Request
    body: bytes
    proxy: HostileProxy
    mutation: Mutation | None = None

    @property
    def is_watch(self) -> bool:
        return self.request.query.get("watch") in ("true", "1")

    async def upstream(self) -> aiohttp.ClientResponse:
        """Send the request on to the real peer; the caller releases the response."""
        headers = {
            k: v
            for k, v in self.request.headers.items()
            if k.lower() not in ("host", "content-length", "transfer-encoding", "connection")
        }
        stand_in = self.proxy.client_token
        if stand_in and headers.get("Authorization") == f"Bearer {stand_in}":
            # The client's token is the proxy's own: the peer gets the real one, if any.
            real = self.proxy.token
            headers.pop("Authorization")
            if real:
                headers["Authorization"] = f"Bearer {real}"
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=None)
        return await self.proxy._session().request(
            self.request.method,
            self.proxy.upstream_url + self.request.path_qs,
            headers=headers,
            data=self.body or None,
            timeout=timeout,
            allow_redirects=False,
            ssl=self.proxy.upstream_ssl if self.proxy.upstream_ssl is not None else True,
        )

    async def start(self, status: int, headers: Any) -> web.StreamResponse:
        out = web.StreamResponse(status=status)
        for k, v in headers.items():
            if k.lower() not in (
                "content-length",
                "transfer-encoding",
                "connection",
                "content-encoding",
                "date",
                "server",
            ):
                out.headers[k] = v
        await out.prepare(self.request)
        return out

    async def passthrough(self) -> web.StreamResponse:
        """Forward the request and stream the answer back unchanged (but a watch stream
        falls silent, connection held, once the proxy's watches are frozen)."""
        async with await self.upstream() as up:
            out = await self.start(up.status, up.headers)
            async for chunk in up.content.iter_any():
                if self.is_watch and self.proxy.watches_frozen:
                    await _forever(self)
                await out.write(chunk)
            await out.write_eof()
            return out

    async def whole(self) -> tuple[int, Any, bytes]:
        async with await self.upstream() as up:
            return up.status, up.headers, await up.read()

    def param(self, key: str, default: Any) -> Any:
        return (self.mutation.params if self.mutation else {}).get(key, default)


Strategy = Callable[[Exchange], Awaitable[web.StreamResponse]]


# -- the strategies -------------------------------------------------------------------


async def _garbage_lines(ex: Exchange) -> web.StreamResponse:
    """A watch stream that interleaves garbage lines with the real events."""
    lines = ex.param("lines", GARBAGE_LINES)
    async with await ex.upstream() as up:
        out = await ex.start(up.status, up.headers)
        await out.write(random.choice(lines) + b"\n")
        async for line in up.content:
            await out.write(line)
            await out.write(random.choice(lines) + b"\n")
        await out.write_eof()
        return out


async def _error_event(ex: Exchange) -> web.StreamResponse:
    """A watch stream that sends an ERROR event (not 410) first, then the real events."""
    async with await ex.upstream() as up:
        out = await ex.start(up.status, up.headers)
        await out.write(ERROR_EVENT + b"\n")
        async for chunk in up.content.iter_any():
            await out.write(chunk)
        await out.write_eof()
        return out


async def _stall_watch(ex: Exchange) -> web.StreamResponse:
    """A watch stream that delivers ``events`` real lines (default 0), then falls silent
    with the connection held open: a stalled watch while lists still work."""
    keep = int(ex.param("events", 0))
    async with await ex.upstream() as up:
        out = await ex.start(up.status, up.headers)
        for _ in range(keep):
            line = await up.content.readline()
            if not line:
                break
            await out.write(line)
        await _forever(ex)
        return out


def _wrong(value: Any) -> Any:
    """A value of another JSON type than ``value``."""
    if isinstance(value, dict):
        return [value]
    if isinstance(value, list):
        return {"not": "a list"}
    if isinstance(value, str):
        return 12345
    if isinstance(value, bool | int | float):
        return "not a number"
    return {"unexpected": True}


async def _wrong_shape(ex: Exchange) -> web.StreamResponse:
    """The real answer, with every top-level field given a value of the wrong type (or
    ``params["body"]`` instead)."""
    status, headers, raw = await ex.whole()
    body = ex.param("body", None)
    if body is None:
        try:
            value = json.loads(raw)
        except ValueError:
            value = None
        body = {k: _wrong(v) for k, v in value.items()} if isinstance(value, dict) else []
    return web.Response(
        status=status, body=json.dumps(body).encode(), content_type="application/json"
    )


async def _not_json(ex: Exchange) -> web.StreamResponse:
    """The real status with an HTML body, as a captive portal or a broken gateway sends."""
    status, _, _ = await ex.whole()
    return web.Response(
        status=status, body=b"<html><body>502 Bad Gateway</body></html>", content_type="text/html"
    )


async def _truncate(ex: Exchange) -> web.StreamResponse:
    """The real answer's headers, with its full Content-Length, and half of its body."""
    status, headers, raw = await ex.whole()
    out = web.StreamResponse(status=status)
    out.content_type = headers.get("Content-Type", "application/json").split(";")[0]
    out.content_length = max(len(raw), 2)
    await out.prepare(ex.request)
    await out.write(raw[: len(raw) // 2])
    _abort(ex)
    return out


async def _trickle(ex: Exchange) -> web.StreamResponse:
    """The real answer, one byte every ``interval`` s (default 0.5); with ``within``, the
    bytes come faster if need be so that the whole answer takes at most that many seconds;
    with ``forever``, a body that never ends (spaces after the real bytes)."""
    interval = float(ex.param("interval", 0.5))
    status, headers, raw = await ex.whole()
    if ex.param("within", None) is not None:
        interval = min(interval, float(ex.param("within", None)) / max(len(raw), 1))
    out = await ex.start(status, headers)
    for i in range(len(raw)):
        await out.write(raw[i : i + 1])
        await asyncio.sleep(interval)
    while ex.param("forever", False):
        await out.write(b" ")
        await asyncio.sleep(interval)
    await out.write_eof()
    return out


async def _reset(ex: Exchange) -> web.StreamResponse:
    """Close the connection without an answer."""
    _abort(ex)
    raise ConnectionResetError("reset by the hostile proxy")


async def _status(ex: Exchange) -> web.StreamResponse:
    """Answer ``status`` (default 503), with ``Retry-After`` when ``retry_after`` is set."""
    status = int(ex.param("status", 503))
    headers = {}
    if ex.param("retry_after", None) is not None:
        headers["Retry-After"] = str(ex.param("retry_after", None))
    body = {"kind": "Status", "code": status, "message": "injected by the hostile proxy"}
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        content_type="application/json",
        headers=headers,
    )


async def _stall(ex: Exchange) -> web.StreamResponse:
    """Never answer: hold the connection until the client gives up."""
    await _forever(ex)
    raise ConnectionResetError("unreachable")


async def _echo_authorization(ex: Exchange) -> web.StreamResponse:
    """Answer ``status`` (default 500) with the request's Authorization header in the
    body, as a peer that logs (or reflects) its input does."""
    status = int(ex.param("status", 500))
    auth = ex.request.headers.get("Authorization", "")
    body = {
        "error": {"message": f"request refused; you sent Authorization: {auth}"},
        "message": f"denied: {auth}",
        "headers": {"Authorization": auth},
    }
    return web.Response(
        status=status, body=json.dumps(body).encode(), content_type="application/json"
    )


#: The ways a careless peer quotes a credential it received, each worth masking because
#: real software produces it by accident: as is in a sentence (an error that reflects its
#: input), percent-encoded (a reflected URL or form), JSON-escaped (``\\/`` for ``/``: a
#: serialised request), base64 (a Kubernetes Secret's data, a Basic credential), inside a
#: URL's userinfo and query (a logged request line), and as is but split across two
#: chunks of the body. Transformations no software makes by accident (reversed, hex,
#: case-changed) are left out: a peer that means to hide a secret from a masker can
#: always do it, and masking protects against the accidental echo.
ECHO_FORMS = ("plain", "percent", "json", "base64", "url", "split")


def echo_form(token: str, form: str) -> str:
    """``token`` quoted the way :data:`ECHO_FORMS` names."""
    if form == "percent":
        return urllib.parse.quote(token, safe="")
    if form == "json":
        return json.dumps(token)[1:-1].replace("/", "\\/")
    if form == "base64":
        return base64.b64encode(b"Secret:" + token.encode()).decode()
    if form == "url":
        return f"https://user:{token}@peer.example/v1?token={token}&page=2"
    return token


async def _echo_secret(ex: Exchange) -> web.StreamResponse:
    """Answer ``status`` (default 503) with the credential the request carried, quoted in
    the next of ``forms`` (:data:`ECHO_FORMS`), in the body's message and in a header."""
    status = int(ex.param("status", 503))
    forms = ex.param("forms", list(ECHO_FORMS))
    form = forms[ex.proxy.echoes % len(forms)]
    ex.proxy.echoes += 1
    token = ex.request.headers.get("Authorization", "").partition(" ")[2]
    ex.proxy.echoed.append(token)
    quoted = echo_form(token, form)
    body = f'{{"kind": "Status", "code": {status}, "message": "token {quoted} refused ({form})"}}'
    out = web.StreamResponse(status=status)
    out.content_type = "application/json"
    out.headers["WWW-Authenticate"] = f'Bearer error="invalid_token", token="{quoted}"'
    await out.prepare(ex.request)
    data = body.encode()
    if form == "split":
        half = body.index(token) + len(token) // 2
        await out.write(data[:half])
        await asyncio.sleep(0.05)  # two chunks on the wire, the token cut between them
        data = data[half:]
    await out.write(data)
    await out.write_eof()
    return out


#: Interim answers a flooding peer repeats: a bare 100 and an Early Hints with a header.
INTERIM = (
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n"
)


async def _raw_for_ever(ex: Exchange, first: bytes, then: bytes) -> web.StreamResponse:
    """Write ``first``, then ``then`` again and again, as raw bytes on the connection,
    until the client goes (or the proxy is cleared); then cut it. Paced by the socket's
    own buffer: the proxy holds no more than a few writes of it."""
    transport = ex.request.transport
    assert transport is not None
    stop = asyncio.Event()
    ex.proxy._stalled.append(stop)
    transport.write(first)
    while not transport.is_closing() and not stop.is_set():
        if transport.get_write_buffer_size() > 256 * 1024:
            await asyncio.sleep(0.005)  # the client reads at its pace; no busy loop
            continue
        transport.write(then)
        await asyncio.sleep(0)
    _abort(ex)
    raise ConnectionResetError("flooded by the hostile proxy")


async def _interim_flood(ex: Exchange) -> web.StreamResponse:
    """Interim (1xx) answers without end, never the final one."""
    return await _raw_for_ever(ex, b"", INTERIM * 8)


async def _chunk_extension(ex: Exchange) -> web.StreamResponse:
    """A 200 whose chunked body begins with a chunk extension that never ends."""
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n5;ext="
    )
    return await _raw_for_ever(ex, head, b"a" * 16384)


STRATEGIES: dict[str, Strategy] = {
    "garbage_lines": _garbage_lines,
    "error_event": _error_event,
    "stall_watch": _stall_watch,
    "wrong_shape": _wrong_shape,
    "not_json": _not_json,
    "truncate": _truncate,
    "trickle": _trickle,
    "reset": _reset,
    "status": _status,
    "stall": _stall,
    "echo_authorization": _echo_authorization,
    "echo_secret": _echo_secret,
    "interim_flood": _interim_flood,
    "chunk_extension": _chunk_extension,
}


async def _forever(ex: Exchange) -> None:
    stop = asyncio.Event()
    ex.proxy._stalled.append(stop)
    await stop.wait()


def _abort(ex: Exchange) -> None:
    transport = ex.request.transport
    if transport is not None:
        transport.abort()


# -- the proxy ------------------------------------------------------------------------


class HostileProxy:
    """An HTTP proxy on 127.0.0.1 in front of ``upstream_url``, applying mutations."""

    def __init__(
        self,
        upstream_url: str,
        mutations: list[Mutation] | None = None,
        *,
        upstream_ssl: ssl.SSLContext | None = None,
    ) -> None:
        self.upstream_url = upstream_url.rstrip("/")
        self.upstream_ssl = upstream_ssl
        self.mutations: list[Mutation] = list(mutations or [])
        #: ``(mutation name, method, path)`` for every request a mutation answered.
        self.applied: list[tuple[str, str, str]] = []
        #: How many answers ``echo_secret`` gave (each quotes the next form), and the
        #: credentials they quoted.
        self.echoes = 0
        self.echoed: list[str] = []
        self.requests = 0
        #: ``(method, path with query, whether a watch)`` of every request, as they came.
        self.seen: list[tuple[str, str, bool]] = []
        #: The indexes in ``seen`` of the requests whose whole answer has been sent.
        self.answered: set[int] = set()
        self._traffic = asyncio.Condition()
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None
        self._stalled: list[asyncio.Event] = []
        self._tempdir: tempfile.TemporaryDirectory[str] | None = None
        #: Set by :meth:`freeze_watches`: every watch stream, open or new, stops talking.
        self.watches_frozen = False

    def freeze_watches(self) -> None:
        """Stall every watch stream from now on, those already open included, while every
        other request still works: a watch that stalls without an error to tell."""
        self.watches_frozen = True

    async def until(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds: it is asked again after every request that
        comes and every answer that is sent (the caller bounds the wait)."""
        async with self._traffic:
            await self._traffic.wait_for(predicate)

    async def _moved(self) -> None:
        async with self._traffic:
            self._traffic.notify_all()

    def add(self, *mutations: Mutation) -> HostileProxy:
        self.mutations.extend(mutations)
        return self

    def clear(self) -> None:
        """Stop misbehaving: forward everything from now on, and release stalled requests."""
        self.mutations.clear()
        self.watches_frozen = False
        for stop in self._stalled:
            stop.set()
        self._stalled.clear()

    def _session(self) -> aiohttp.ClientSession:
        if self._client is None:
            self._client = aiohttp.ClientSession(auto_decompress=False)
        return self._client

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        ex = Exchange(request, await request.read(), self)
        index = len(self.seen)
        self.seen.append((request.method, request.path_qs, ex.is_watch))
        await self._moved()
        answer = await self._answer(ex)
        self.answered.add(index)
        await self._moved()
        return answer

    async def _answer(self, ex: Exchange) -> web.StreamResponse:
        request = ex.request
        for mutation in self.mutations:
            if mutation.matches(request, ex.is_watch):
                if mutation.times is not None:
                    mutation.times -= 1
                ex.mutation = mutation
                self.applied.append((mutation.name, request.method, request.path))
                return await STRATEGIES[mutation.name](ex)
        try:
            return await ex.passthrough()
        except aiohttp.ClientError:
            _abort(ex)
            raise

    async def __aenter__(self) -> HostileProxy:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # A client that goes away cancels its handler: a proxied watch must not outlive it.
        self._runner = web.AppRunner(
            app,
            handle_signals=False,
            access_log=None,
            handler_cancellation=True,
            shutdown_timeout=1.0,
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.clear()
        if self._client is not None:
            await self._client.close()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._tempdir is not None:
            self._tempdir.cleanup()

    # -- in front of a Kubernetes API server ------------------------------------------

    @classmethod
    def for_kubeconfig(
        cls, kubeconfig: Path, mutations: list[Mutation] | None = None
    ) -> HostileProxy:
        """A proxy in front of the kubeconfig's current cluster (enter it, then call
        :meth:`write_kubeconfig`)."""
        config = yaml.safe_load(kubeconfig.read_text())
        context = _named(config, "contexts", config["current-context"])["context"]
        cluster = _named(config, "clusters", context["cluster"])["cluster"]
        user = _named(config, "users", context["user"])["user"]
        server = cluster["server"]
        context_ssl = None
        tempdir: tempfile.TemporaryDirectory[str] | None = None
        if server.startswith("https://"):
            tempdir = tempfile.TemporaryDirectory(prefix="hostile-")
            # Trust the kubeconfig's CA alone when it names one, as kubectl does: the
            # system's bundle (about 45 ms of CPU to load, per proxy) only when it does not.
            if "certificate-authority-data" in cluster:
                ca = base64.b64decode(cluster["certificate-authority-data"]).decode()
                context_ssl = ssl.create_default_context(cadata=ca)
            elif "certificate-authority" in cluster:
                context_ssl = ssl.create_default_context(cafile=cluster["certificate-authority"])
            else:
                context_ssl = ssl.create_default_context()
            if cluster.get("insecure-skip-tls-verify"):
                context_ssl.check_hostname = False
                context_ssl.verify_mode = ssl.CERT_NONE
            cert = _material(user, "client-certificate", tempdir.name)
            key = _material(user, "client-key", tempdir.name)
            if cert and key:
                context_ssl.load_cert_chain(cert, key)
        proxy = cls(server, mutations, upstream_ssl=context_ssl)
        proxy._tempdir = tempdir
        proxy._kubeconfig = config
        proxy._kube_user = user
        return proxy

    _kubeconfig: dict[str, Any] | None = None
    _kube_user: dict[str, Any] | None = None

    #: A token of the proxy's own that clients send in place of the cluster's (see
    #: :meth:`write_kubeconfig`); the proxy sends the real one on.
    client_token: str | None = None

    def write_kubeconfig(
        self, path: Path, token: str | None = None, *, plugin: bool = False
    ) -> Path:
        """A kubeconfig that reaches the cluster through this proxy, with the same token,
        or with ``token``, which the proxy swaps for the cluster's own on the way;
        ``plugin``: ``token`` comes from a credential plugin (``users[].user.exec``)."""
        assert self.url and self._kube_user is not None, "enter the proxy first"
        user = {k: v for k, v in self._kube_user.items() if k in ("token", "username", "password")}
        if token is not None:
            user = {"token": token}
            self.client_token = token
        if token is not None and plugin:
            answer = {
                "apiVersion": "client.authentication.k8s.io/v1",
                "kind": "ExecCredential",
                "status": {"token": token},
            }
            script = path.with_name(path.name + "-credential-plugin")
            script.write_text(f"#!{sys.executable}\nprint({json.dumps(answer)!r})\n")
            script.chmod(0o755)
            user = {
                "exec": {
                    "apiVersion": "client.authentication.k8s.io/v1",
                    "command": str(script),
                    "interactiveMode": "Never",
                }
            }
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "hostile", "cluster": {"server": self.url}}],
            "users": [{"name": "hostile", "user": user}],
            "contexts": [
                {
                    "name": "hostile",
                    "context": {"cluster": "hostile", "user": "hostile", "namespace": "default"},
                }
            ],
            "current-context": "hostile",
        }
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    @property
    def token(self) -> str | None:
        """The bearer token of the proxied kubeconfig: a secret no output may show."""
        return (self._kube_user or {}).get("token")


def _named(config: dict[str, Any], kind: str, name: str) -> dict[str, Any]:
    return next(item for item in config[kind] if item["name"] == name)


def _material(user: dict[str, Any], key: str, folder: str) -> str | None:
    if f"{key}-data" in user:
        path = Path(folder) / key
        path.write_bytes(base64.b64decode(user[f"{key}-data"]))
        return str(path)
    value = user.get(key)
    return str(value) if value else None


# -- the randomized mode --------------------------------------------------------------

#: Where a mutation may aim, per peer: route patterns that every flow exercises.
KUBE_TARGETS = {
    "watch": {"watch": True, "path": ""},
    "list": {"watch": False, "method": "GET", "path": r"/(pods|services|workspaces)(\?|$)"},
    "model": {"watch": False, "path": r"/proxy/v1/chat/completions"},
}
BACKEND_TARGETS = {
    "status": {"method": "GET", "path": r"^/api/deployments/[^/?]+\?"},
    "install": {"path": r"/api/installation/"},
    "delete": {"method": "DELETE", "path": r"^/api/deployments/"},
    "any": {"path": ""},
}
#: What a JSON answer may be turned into: broken, or echoing the request's credentials.
_BODIES = ["wrong_shape", "not_json", "truncate", "reset", "status"]
_ECHOES = ["echo_authorization", "echo_secret"]
#: Framing without end: interim answers, a chunk extension (refused at a bound, at once).
_FLOODS = ["interim_flood", "chunk_extension"]
_BY_TARGET = {
    "watch": ["garbage_lines", "error_event", "stall_watch", "reset", "status", *_FLOODS],
    "list": _BODIES + _ECHOES + _FLOODS,
    "model": [*_BODIES, "trickle"],
    "status": _BODIES + _ECHOES + _FLOODS,
    "install": ["reset", "status", *_ECHOES, "interim_flood"],
    "delete": _BODIES + _ECHOES + _FLOODS,
    "any": ["reset", "status", "trickle", "interim_flood"],
}


@st.composite
def mutations(draw: st.DrawFn, targets: dict[str, dict[str, Any]]) -> Mutation:
    """One random mutation aimed at one of ``targets`` (:data:`KUBE_TARGETS`,
    :data:`BACKEND_TARGETS`), hitting a few requests."""
    target = draw(st.sampled_from(sorted(targets)))
    name = draw(st.sampled_from(_BY_TARGET[target]))
    params: dict[str, Any] = {}
    if name == "status":
        params["status"] = draw(st.sampled_from([429, 500, 502, 503, 504]))
        params["retry_after"] = draw(st.none() | st.sampled_from([0, 1, 3]))
    if name == "trickle":
        # Still one byte at a time with pauses, but each answer whole within a second. At
        # 20 ms a byte, one backend answer took tens of seconds and met the request's own
        # 30 s deadline, up to four times an example (an Install of 121 s). A body that
        # outlasts its deadline is held by the named trickle tests (``forever``), which
        # meet a phase deadline of seconds, and by the soak, which still draws it.
        params["interval"] = draw(st.sampled_from([0.005, 0.02]))
        params["within"] = 1.0
    if name == "echo_secret":
        params["forms"] = draw(st.lists(st.sampled_from(ECHO_FORMS), min_size=1, max_size=3))
        params["status"] = draw(st.sampled_from([400, 401, 500, 503]))
    times = draw(st.integers(min_value=1, max_value=4))
    return Mutation(name, times=times, params=params, **targets[target])


def plans(
    targets: dict[str, dict[str, Any]], max_size: int = 3
) -> st.SearchStrategy[list[Mutation]]:
    """Random sets of mutations for one peer: the randomized mode."""
    return st.lists(mutations(targets), min_size=1, max_size=max_size)
