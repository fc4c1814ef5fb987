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
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

import anyio
import orjson

from .._key_files import forget_written, key_files_in_memory
from ._errors import (
    ClientError,
    LimitExceeded,
    ProtocolError,
    RequestTimeout,
    ResponseFormatError,
    TransportError,
    clip,
    excerpt,
    no_whole_answer,
    parse_retry_after,
    status_error,
)
from ._exec_credential import EXEC_TIMEOUT, bounded_exec_provider
from ._http1 import (
    MAX_BODY,
    AnswerTooLarge,
    ClosedHere,
    Http1Pool,
    Incomplete,
    InterimFlood,
    NotSendable,
    close_all,
)
from ._retry import READS, RetryPolicy, bounded, heard
from ._tls import bare_context, plain_http
from ._watch1 import (
    MAX_ERROR_BODY,
    LineTooLong,
    Outlived,
    WatchConnection,
    open_watch,
    upto_too_long,
)

if TYPE_CHECKING:  # pragma: no cover
    import aiohttp
    from kubernetes_asyncio.client import ApiClient


def _api_client(cfg: Any) -> ApiClient:
    """An ApiClient for ``cfg``, without the CA bundle when it can never open a TLS connection.

    kubernetes-asyncio's REST client builds a verifying TLS context for every ApiClient,
    and with no CA named in the kubeconfig that loads the system's whole CA bundle, about
    18 ms of CPU, even for an ``http://`` server: the sandbox's API server, ``kubectl
    proxy``. Such a server reached directly (no proxy, which could be reached over TLS)
    gets a bare client context instead, made while the ApiClient is built (synchronously,
    so nothing else sees it): it would verify as strictly (certificates required, host
    names checked) but trusts no CA, so were it ever used, it could only fail.
    """
    import ssl

    from kubernetes_asyncio import client
    from kubernetes_asyncio.client import rest

    if (
        not plain_http(str(cfg.host)) or cfg.proxy or getattr(rest, "ssl") is not ssl  # noqa: B009  (someone else's substitute)
    ):
        return client.ApiClient(configuration=cfg)
    setattr(rest, "ssl", _NoCaBundle())  # noqa: B010  (the module the REST client reads)
    try:
        return client.ApiClient(configuration=cfg)
    finally:
        setattr(rest, "ssl", ssl)  # noqa: B010


class _NoCaBundle:
    """The ``ssl`` module as kubernetes-asyncio's REST client sees it while it builds a
    client of a plain-HTTP server: a default context is a bare client one."""

    @staticmethod
    def create_default_context(*_args: Any, **_kwargs: Any) -> Any:
        return bare_context()

    def __getattr__(self, name: str) -> Any:
        import ssl

        return getattr(ssl, name)


def _bound_interim(api: Any) -> None:
    """Give the ApiClient's session the bounds aiohttp's parser lacks (``BoundedResponse``
    and ``BoundedRequest``: a few interim answers at most, no chunk header without end, no
    byte after an answer taken for the next one's). Set on the session kubernetes-asyncio
    made (its classes are read at each request); a stand-in ApiClient without one is left
    as it is."""
    session = getattr(getattr(api, "rest_client", None), "pool_manager", None)
    if session is not None and hasattr(session, "_response_class"):
        from ._aiohttp_transport import BoundedRequest, BoundedResponse

        session._response_class = BoundedResponse
        session._request_class = BoundedRequest


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
SECRETS = Resource("", "v1", "secrets")
NAMESPACES = Resource("", "v1", "namespaces", namespaced=False)
CRDS = Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions", namespaced=False)


#: A request's whole deadline, from sending it to the last byte of its answer. A phase's
#: deadline bounds it further: a request never outlives the phase that sent it.
REQUEST_TIMEOUT = 30.0

#: The headers a read asks with (before the ApiClient's own).
_READ_HEADERS = {"Content-Type": "application/json", "Accept": "application/json, */*"}

#: The ApiClient's auth settings a request asks for (as its generated API methods do).
_BEARER = ["BearerToken"]

#: The kinds of watch event the API server sends.
EVENT_TYPES = frozenset({"ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"})


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """A change to one object. ``type`` is ADDED, MODIFIED or DELETED.

    Objects present at the first listing arrive as ADDED too, so a consumer
    needs one code path for "it was already there" and "it just appeared".
    On the wire there are BOOKMARK (``object`` carries only a resourceVersion) and
    ERROR (``object`` is a ``Status``) too; the watch loop consumes those itself.
    """

    type: str
    object: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.object["metadata"].get("name", ""))


def decode_json(raw: bytes, route: str) -> Any:
    """The JSON value in ``raw``; an empty body is None. Raises :class:`ResponseFormatError`.

    What it accepts, and the value it gives, are :func:`json.loads`'s. orjson decodes
    first where its answer is the same: it is a third of json's time on an object of an
    event's size after an idle while (a 1.1 KiB Workspace, caches cold: 10 us against
    37 us), and every watch event and confirming read goes through here. Where orjson
    would differ it does not decide: an integer literal of 19 digits or more (orjson
    turns one past 64 bits into a float; the check finds any run of 19 digits, a string's
    included, which costs only a needless second look), and whatever it refuses (NaN and
    Infinity, lone surrogates, a UTF-8 BOM, nesting past 1024) goes to json, whose verdict
    stands.
    """
    if not raw or raw.isspace():
        return None
    if _LONG_NUMBER not in raw.translate(_DIGITS_AS_ZERO):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass  # json's verdict, which may be another: it accepts NaN, lone surrogates
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ResponseFormatError(
            f"{route}: the answer is not valid JSON ({type(exc).__name__})",
            route=route,
            excerpt=excerpt(raw),
        ) from None


#: For :func:`decode_json`: every digit as ``0``, so that a run of 19 digits is one search.
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_NUMBER = b"0" * 19


def check_object(value: Any, route: str, what: str = "object") -> dict[str, Any]:
    """``value`` if it is shaped as a Kubernetes object, as far as any reader relies on.

    Cheap on purpose (a handful of ``isinstance`` checks, no model): it runs on every
    watch event. What it guarantees: a dict whose ``metadata`` is a dict with string
    name, namespace and resourceVersion and string-to-string labels, and whose
    ``spec`` and ``status``, when present, are dicts.
    """
    problem = _object_problem(value)
    if problem is not None:
        raise ResponseFormatError(
            f"{route}: the {what} is not a Kubernetes object",
            [problem],
            route=route,
            excerpt=excerpt(_dump(value)),
        )
    return value  # type: ignore[no-any-return]


def _object_problem(value: Any) -> str | None:
    if not isinstance(value, dict):
        return f"(object): expected an object, got {type(value).__name__}"
    meta = value.get("metadata")
    if not isinstance(meta, dict):
        return f"metadata: expected an object, got {type(meta).__name__}"
    for key in ("name", "namespace", "resourceVersion", "deletionTimestamp"):
        if key in meta and not isinstance(meta[key], str | None):
            return f"metadata.{key}: expected a string, got {type(meta[key]).__name__}"
    labels = meta.get("labels")
    if labels is not None and not (
        isinstance(labels, dict) and all(isinstance(v, str) for v in labels.values())
    ):
        return "metadata.labels: expected a map of strings"
    for key in ("spec", "status"):
        if key in value and not isinstance(value[key], dict | None):
            return f"{key}: expected an object, got {type(value[key]).__name__}"
    return None


def check_list(value: Any, route: str) -> dict[str, Any]:
    """``value`` if it is a list answer: ``metadata`` a dict, ``items`` a list of objects."""
    if not isinstance(value, dict) or not isinstance(value.get("metadata", {}), dict):
        raise ResponseFormatError(
            f"{route}: the answer is not a Kubernetes list",
            ["(body): expected an object with metadata and items"],
            route=route,
            excerpt=excerpt(_dump(value)),
        )
    items = value.get("items")
    if items is None:
        value["items"] = []
    elif not isinstance(items, list):
        raise ResponseFormatError(
            f"{route}: the answer is not a Kubernetes list",
            [f"items: expected a list, got {type(items).__name__}"],
            route=route,
            excerpt=excerpt(_dump(value)),
        )
    else:
        for i, item in enumerate(items):
            check_object(item, route, f"item {i}")
    return value


def parse_watch_line(line: bytes, route: str) -> WatchEvent:
    """One line of a watch stream, as a typed event, or :class:`ProtocolError`.

    The one place a watch stream's bytes are trusted or refused: a line that is not
    JSON, an unknown event type, or an object that is not a Kubernetes object (an
    ERROR's ``Status`` excepted) is refused here, with the route and an excerpt.
    """
    raw = decode_json(line, route)
    if not isinstance(raw, dict):
        raise ProtocolError(
            f"{route}: a watch event is not a JSON object", route=route, excerpt=excerpt(line)
        )
    kind, obj = raw.get("type"), raw.get("object")
    if not isinstance(kind, str) or kind not in EVENT_TYPES:
        raise ProtocolError(
            f"{route}: unknown watch event type {excerpt(str(kind), 40)}",
            route=route,
            excerpt=excerpt(line),
        )
    if kind == "ERROR":
        return WatchEvent("ERROR", obj if isinstance(obj, dict) else {})
    if kind == "BOOKMARK":
        if not isinstance(obj, dict) or not isinstance(obj.get("metadata"), dict):
            raise ProtocolError(
                f"{route}: a BOOKMARK without metadata", route=route, excerpt=excerpt(line)
            )
        return WatchEvent("BOOKMARK", obj)
    return WatchEvent(kind, check_object(obj, route, f"{kind} event's object"))


def _dump(value: Any) -> str:
    try:
        return json.dumps(value)[:4096]
    except (TypeError, ValueError, RecursionError):
        return repr(value)[:4096]


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
        _bound_interim(api)
        self.requests_sent = 0
        self.watches_opened = 0
        #: The session reads are sent on, and what each read passes it (see _open_reader).
        self._reader: tuple[aiohttp.ClientSession, dict[str, Any]] | None = None
        #: The lean path for reads, when it applies to this server (see _lean_pool).
        self._lean: Http1Pool | None = None
        #: The server's URL less ``scheme://authority`` (a path prefix, if any): the start
        #: of the lean path's targets, as of the URLs ``_address`` makes for aiohttp's.
        self._base = ""
        #: The lean path's header fields, and what they were made from (see _lean_head).
        self._fields: tuple[dict[str, str], dict[str, str], str | None, bytes] | None = None
        #: Lean watches open now (closed by :meth:`aclose`, as aiohttp's session would).
        self._watching: set[WatchConnection[WatchEvent]] = set()
        #: Whether watches may go the lean way (off once a server encodes a stream).
        self._lean_watches = True
        #: Set once :meth:`aclose` has begun: a stream that ends from then on was ended
        #: here, whatever it looks like on aiohttp's path (a close-delimited body ends
        #: as cleanly as the server's own end).
        self._closing = False
        #: Watches open now on aiohttp's path: its session's close ends their connections
        #: but leaves a chunked body's reader waiting, so :meth:`aclose` ends them first.
        self._streams: set[aiohttp.ClientResponse] = set()

    @staticmethod
    def preload() -> None:
        """Import kubernetes-asyncio now rather than at the first connection."""
        import kubernetes_asyncio.client
        import kubernetes_asyncio.config  # noqa: F401

    @classmethod
    async def from_kubeconfig(
        cls,
        path: str | None = None,
        *,
        context: str | None = None,
        exec_timeout: float = EXEC_TIMEOUT,
    ) -> KubeClient:
        """Load a kubeconfig; a credential plugin it names gets ``exec_timeout`` seconds.

        Cancelling the load (a signal) ends a plugin that is still running.
        """
        from kubernetes_asyncio import client, config
        from kubernetes_asyncio.config import kube_config

        # The loader looks its plugin runner up in its module at each use: ours bounds
        # the plugin in time and ends it when the load is cancelled.
        current = getattr(kube_config, "ExecProvider")  # noqa: B009  (not re-exported)
        base = getattr(current, "unbounded", current)
        bounded = bounded_exec_provider(base, exec_timeout)
        bounded.unbounded = base
        setattr(kube_config, "ExecProvider", bounded)  # noqa: B010
        cfg = client.Configuration()
        # Inline key material goes to memory files that the TLS context reads while the
        # ApiClient is built, and that are gone when it is: a killed run leaves no
        # client key on disk (see _key_files).
        with key_files_in_memory() as written:
            await config.load_kube_config(
                config_file=path, context=context, client_configuration=cfg
            )
            api = _api_client(cfg)
        forget_written(cfg, written)
        return cls(api)

    @property
    def server(self) -> str:
        return str(self._api.configuration.host)

    @property
    def secrets(self) -> list[str]:
        """The credentials this client sends (a kubeconfig's bearer token, a credential
        plugin's, a password): the caller keeps them out of every report."""
        cfg = self._api.configuration
        values = [str(v).removeprefix("Bearer ").strip() for v in (cfg.api_key or {}).values() if v]
        if getattr(cfg, "password", None):
            values.append(str(cfg.password))
        return [v for v in values if v]

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` has begun: nothing this client sends from then on is
        answered, so a loop that reopens or retries (the watch loop, a hub's stream) ends."""
        return self._closing

    async def aclose(self) -> None:
        self._closing = True
        for response in self._streams:
            response.content.set_exception(ClosedHere())  # wakes its reader: see _lines
            response.close()
        self._streams.clear()
        if self._watching:
            await _close_all(self._watching)
        if self._lean is not None:
            await self._lean.aclose()
        if self._reader is not None:
            await self._reader[0].close()  # not its connector: the ApiClient's, closed next
        await self._api.close()

    def _open_reader(self) -> tuple[aiohttp.ClientSession, dict[str, Any]]:
        """A session for reads on the ApiClient's own connector, and what each read passes it.

        The same connection pool and TLS context (the connector holds both), the same
        cookie jar, read buffer, proxy and TLS server name. One difference: the
        ApiClient's session has ``trust_env`` on, and aiohttp then asks a worker thread,
        on every request, for the netrc entry and for the environment's proxy: two
        round trips through a thread pool that cost a read about a quarter of a
        millisecond warm and more after an idle while. Both are asked here once, with
        the same functions, and passed with each read, the way httpx reads the
        environment once per client.
        """
        import aiohttp
        from aiohttp.helpers import get_env_proxy_for_url
        from yarl import URL

        rest = self._api.rest_client
        own: aiohttp.ClientSession = rest.pool_manager
        reader = aiohttp.ClientSession(
            connector=own.connector,
            connector_owner=False,
            cookie_jar=own.cookie_jar,
            read_bufsize=2**21,  # as kubernetes-asyncio's own session
            response_class=own._response_class,  # BoundedResponse (see _bound_interim)
            request_class=own._request_class,  # BoundedRequest
        )
        extra: dict[str, Any] = {}
        if rest.proxy:
            extra["proxy"] = rest.proxy
        elif own.trust_env:
            try:
                extra["proxy"], extra["proxy_auth"] = get_env_proxy_for_url(URL(self.server))
            except LookupError:
                pass
        if rest.proxy_headers:
            extra["proxy_headers"] = rest.proxy_headers
        if rest.server_hostname:
            extra["server_hostname"] = rest.server_hostname
        host = URL(self.server).host
        if own.trust_env and host is not None:
            # With an Authorization header too, aiohttp refuses the request (ValueError,
            # a TransportError here), exactly as it does on the ApiClient's session.
            netrc_auth = own._get_netrc_auth(host)
            if netrc_auth is not None:
                extra["auth"] = netrc_auth
        self._reader = reader, extra
        self._lean = self._lean_pool(own, extra)
        return self._reader

    def _lean_pool(self, own: aiohttp.ClientSession, extra: dict[str, Any]) -> Http1Pool | None:
        """The lean path for reads (:mod:`._http1`), where it sends exactly what aiohttp
        would: the server reached directly (no proxy, from the kubeconfig or the
        environment), no netrc entry for it, no credentials in its URL; the same TLS
        context (the connector's: the kubeconfig's CA, client certificate and
        verification settings), TLS server name and connection limit. Anything else keeps
        every read on aiohttp's path.

        The address is read by yarl, as aiohttp reads it, so that the host connected to,
        the ``Host`` header (lower case, IDNA, no default port, IPv6 in brackets) and the
        TLS server name (no trailing dot) are the ones aiohttp used.
        """
        import ssl
        from urllib.parse import urlsplit

        from yarl import URL

        try:
            origin = urlsplit(self.server)
            url = URL(self.server)
            host, port, authority = url.raw_host, url.port, url.host_port_subcomponent
        except ValueError:
            return None
        if (
            url.scheme not in ("http", "https")
            or not host
            or port is None
            or authority is None
            or "@" in origin.netloc
            or origin.query
            or origin.fragment
            or set(extra) - {"server_hostname"}
        ):
            return None
        tls = getattr(own.connector, "_ssl", None)
        if url.scheme == "https" and not isinstance(tls, ssl.SSLContext):
            return None
        # The literal start of every read's URL (``_address``), cut off for its target.
        self._base = self.server[len(f"{origin.scheme}://{origin.netloc}") :]
        return Http1Pool(
            host,
            port,
            authority=authority,
            tls=tls if url.scheme == "https" else None,
            server_hostname=(extra.get("server_hostname") or host).rstrip("."),
            limit=getattr(own.connector, "limit", 0) or 100,
        )

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
        chunked: bool = False,
    ) -> Any:
        """Send a request and return the raw aiohttp response (the caller reads and releases it).

        ``chunked`` sends the body (JSON) with chunked transfer coding, not a
        Content-Length: for a body that the API server forwards (``services/proxy``).
        Its proxy (Go's ``httputil.ReverseProxy``, in kube-apiserver as in the test
        cluster) reads a Content-Length body once more after forwarding it, to see it
        end; if the upstream's answer has begun by then, the server has already closed
        that body, the read fails, and the proxy drops the upstream connection: the
        answer is cut mid-stream (golang/go#40747): a few streamed completions in a
        thousand on a busy two-core machine. The end of a chunked body is read before
        it is forwarded, so the upstream cannot answer before the proxy is done with it.
        """
        import aiohttp

        self.requests_sent += 1
        headers = {"Content-Type": content_type, "Accept": accept}
        params = [(k, _query_value(v)) for k, v in (query or {}).items() if v is not None]
        try:
            if chunked:
                return await self._send_chunked(method, path, params, headers, body, timeout)
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
        except ClientError:
            raise
        except Exception as exc:
            # The transport's boundary: a connection failure, and whatever a peer's broken
            # HTTP makes the transport raise (a header too long, a bad status line).
            raise _broken(method, path, None, 0, exc) from None

    async def _addressed(
        self, path: str, params: list[tuple[str, str]], headers: dict[str, str]
    ) -> tuple[str, dict[str, str]]:
        """The URL and headers ``call_api`` would send for a request that goes around it:
        the ApiClient's default headers and cookie, and its ``Authorization`` (from its own
        ``update_params_for_auth``, so a refresh hook or a credential plugin's token is
        what is sent)."""
        return self._address(path, params, headers, *await self._auth())

    async def _auth(self) -> tuple[dict[str, str], list[tuple[str, str]]]:
        """What the ApiClient's ``update_params_for_auth`` adds to a request now: its
        headers (``authorization``) and query parameters. Asked for every request: a
        refresh hook or a credential plugin may have rotated the token since the last."""
        auth_headers: dict[str, str] = {}
        auth_query: list[tuple[str, str]] = []
        await self._api.update_params_for_auth(auth_headers, auth_query, _BEARER)
        return auth_headers, auth_query

    def _address(
        self,
        path: str,
        params: list[tuple[str, str]],
        headers: dict[str, str],
        auth_headers: dict[str, str],
        auth_query: list[tuple[str, str]],
    ) -> tuple[str, dict[str, str]]:
        """:meth:`_addressed` with :meth:`_auth`'s answer in hand. The auth is applied
        after the default headers and cookie, by key, as ``update_params_for_auth`` applies
        it to the request's own headers: the same headers, in the same order."""
        api = self._api
        headers = {**headers, **api.default_headers}
        if api.cookie:
            headers["Cookie"] = api.cookie
        headers.update(auth_headers)
        query = params + auth_query
        url = f"{api.configuration.host}{path}"
        return (url + "?" + urlencode(query) if query else url), headers

    def _lean_head(
        self,
        lean: Http1Pool,
        path: str,
        params: list[tuple[str, str]],
        auth_headers: dict[str, str],
        auth_query: list[tuple[str, str]],
    ) -> bytes | None:
        """The lean path's request head, or None when it cannot send it as it is.

        A read's header fields are the same from one read to the next (the ApiClient's
        default headers, cookie and ``Authorization``), so the checked and encoded fields
        are kept and only the request line is made for each read: fewer instructions on
        a path that runs cold (a waiter idles for seconds between two events, and its
        confirming read is on the way from a change to the wait's end). They are kept
        only while what they were made from is equal to what the ApiClient gives now
        (``update_params_for_auth`` is asked for every read, so a rotated token makes
        them again). A query of ASCII letters and digits only (the waiter's
        ``resourceVersion=N``) is what ``urlencode`` would make of it: it is joined as it
        is.
        """
        api = self._api
        kept = self._fields
        if (
            kept is None
            or kept[0] != auth_headers
            or kept[1] != api.default_headers
            or kept[2] != api.cookie
        ):
            _, headers = self._address(path, [], _READ_HEADERS, auth_headers, [])
            try:
                fields = lean.fields(headers.items())
            except NotSendable:
                return None  # aiohttp's path sends it, or says why it cannot
            kept = self._fields = (auth_headers, dict(api.default_headers), api.cookie, fields)
        target = self._base + path
        if query := params + auth_query:
            for k, v in query:
                if not ((pair := k + v).isascii() and pair.isalnum()):
                    target += "?" + urlencode(query)
                    break
            else:
                target += "?" + "&".join([f"{k}={v}" for k, v in query])
        try:
            return lean.request_line(target) + kept[3]
        except NotSendable:
            return None

    async def _send_chunked(
        self,
        method: str,
        path: str,
        params: list[tuple[str, str]],
        headers: dict[str, str],
        body: Any,
        timeout: Any,
    ) -> Any:
        """:meth:`open` with a chunked body, on the ApiClient's own session.

        kubernetes-asyncio's ``call_api`` always sends a Content-Length; this sends what
        it would (its default headers, cookie and ``Authorization``, the same URL), and
        the same timeouts: a number is the total, an ``aiohttp.ClientTimeout`` is used
        as it is.
        """
        import aiohttp

        url, headers = await self._addressed(path, params, headers)
        if isinstance(timeout, int | float):
            timeout = aiohttp.ClientTimeout(total=timeout)
        elif not isinstance(timeout, aiohttp.ClientTimeout):
            timeout = aiohttp.ClientTimeout()
        data = None if body is None else json.dumps(body).encode()
        reader, extra = self._reader or self._open_reader()
        return await reader.request(
            method, url, data=data, chunked=True, headers=headers, timeout=timeout, **extra
        )

    async def exchange(
        self, method: str, path: str, *, timeout: float | None = None, **kwargs: Any
    ) -> tuple[int, Any, bytes]:
        """Send a request and read its whole answer within one deadline: status, headers, body.

        The deadline (``timeout``, else :data:`REQUEST_TIMEOUT`, and never past the
        caller's own deadline) covers the body too: a server that trickles its answer a
        byte at a time is ended like one that never answers, and the error says what
        had arrived by then, and after how long.
        """
        import aiohttp

        total = bounded(timeout or REQUEST_TIMEOUT)
        started = anyio.current_time()
        received = bytearray()
        status: int | None = None
        with anyio.move_on_after(total):
            response = await self.open(
                method,
                path,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=total),
                **kwargs,
            )
            status = response.status
            try:
                async for chunk in response.content.iter_any():
                    received += chunk
                    if len(received) > MAX_BODY:
                        raise _too_large()
                return response.status, response.headers, bytes(received)
            except (TimeoutError, aiohttp.ServerTimeoutError):
                pass  # reported below, with what arrived
            except Exception as exc:
                raise _broken(method, path, status, len(received), exc) from None
            finally:
                response.release()
        raise no_whole_answer(method, path, anyio.current_time() - started, status, received)

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send a request; return the decoded body of a 2xx, raise the matching error otherwise.

        A 2xx whose body is not JSON raises :class:`ResponseFormatError`; other statuses
        raise the matching :class:`HTTPStatusError`, with the server's own message.
        """
        status, headers, raw = await self.exchange(method, path, **kwargs)
        if 200 <= status < 300:
            return decode_json(raw, f"{method} {path}")
        raise _answer_error(status, headers, raw, method, path)

    async def read(
        self,
        path: str,
        check: Callable[[Any, str], dict[str, Any]],
        retry: RetryPolicy | None = None,
        *,
        query: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """A GET whose answer ``check`` accepts, retried through flakes (broken bytes
        included) until the caller's deadline: reads are idempotent.

        Each try is :meth:`_get_once`. Only a failure worth another try meets the retry
        policy (tenacity's bookkeeping, the deadline arithmetic): the first try is sent
        before any of it is set up, since most reads succeed at once and a waiter's
        confirming read is on the path from a change to the wait's end.
        """
        try:
            answer = await self._get_once(path, check, query, timeout)
        except ClientError as exc:
            if self._closing:
                raise _read_closed(path) from None
            policy = retry or READS
            if not policy.retryable(exc):
                raise
            return await policy.call(
                partial(self._get_again, path, check, query, timeout),
                failed=exc,
                route=f"GET {path}",
            )
        heard(f"GET {path}", None)
        return answer

    async def _get_again(
        self,
        path: str,
        check: Callable[[Any, str], dict[str, Any]],
        query: dict[str, Any] | None,
        timeout: float | None,
    ) -> dict[str, Any]:
        """:meth:`_get_once` as a retry: not sent once :meth:`aclose` has begun, and a try
        that the close cuts short says so (neither is retried)."""
        if self._closing:
            raise _read_closed(path)
        try:
            return await self._get_once(path, check, query, timeout)
        except ClientError:
            if self._closing:
                raise _read_closed(path) from None
            raise

    async def _get_once(
        self,
        path: str,
        check: Callable[[Any, str], dict[str, Any]],
        query: dict[str, Any] | None,
        timeout: float | None,
    ) -> dict[str, Any]:
        """One GET, with the ApiClient's headers and the ``Authorization`` from its own
        ``update_params_for_auth`` (so a refresh hook or a credential plugin's token is
        what is sent), without the layers a read does not need (``call_api``'s parameter
        sanitising, an anyio scope around the body). After an idle while every
        instruction on the way is cold, so fewer of them is what makes a confirming read
        fast.

        It goes on the lean path (:mod:`._http1`: a kept-alive connection of its own, the
        answer parsed by llhttp) wherever that sends exactly what aiohttp would (see
        :meth:`_lean_pool`); otherwise straight on the aiohttp session kubernetes-asyncio's
        ApiClient owns: the same connection pool, TLS context, proxy and cookies as
        :meth:`open`. Either way the deadline bounds the whole exchange, body included,
        within the caller's.

        The one place a read's bytes are trusted or refused: a 2xx whose body ``check``
        accepts, or a :class:`ClientError` naming the route, what arrived (redacted) and
        after how long.
        """
        self.requests_sent += 1
        auth_headers: dict[str, str] = {}
        auth_query: list[tuple[str, str]] = []
        await self._api.update_params_for_auth(auth_headers, auth_query, _BEARER)
        params = [(k, _query_value(v)) for k, v in query.items() if v is not None] if query else []
        reader, extra = self._reader or self._open_reader()
        total = bounded(timeout or REQUEST_TIMEOUT)
        lean = self._lean
        if lean is not None and lean.can_take() and not len(reader.cookie_jar):
            head = self._lean_head(lean, path, params, auth_headers, auth_query)
            if head is not None:
                return await self._lean_get(lean, head, path, check, total)
        import aiohttp

        url, headers = self._address(path, params, _READ_HEADERS, auth_headers, auth_query)
        limits = aiohttp.ClientTimeout(total=total, sock_connect=10, ceil_threshold=math.inf)
        started = time.monotonic()
        received = bytearray()
        status: int | None = None
        try:
            async with reader.get(url, headers=headers, timeout=limits, **extra) as r:
                status = r.status
                answer_headers = r.headers
                while chunk := await r.content.readany():
                    received += chunk
                    if len(received) > MAX_BODY:
                        raise _too_large()
        except TimeoutError:  # aiohttp's own timeouts are TimeoutErrors too
            elapsed = time.monotonic() - started
            raise no_whole_answer("GET", path, elapsed, status, received) from None
        except Exception as exc:
            # The transport's boundary: a connection failure, and whatever a peer's broken
            # HTTP makes aiohttp raise (a header too long, a bad status line, a body cut).
            raise _broken("GET", path, status, len(received), exc) from None
        raw = bytes(received)
        assert status is not None  # the answer came, or an error was raised above
        if 200 <= status < 300:
            route = f"GET {path}"
            return check(decode_json(raw, route), route)
        raise _answer_error(status, answer_headers, raw, "GET", path)

    async def _lean_get(
        self,
        lean: Http1Pool,
        head: bytes,
        path: str,
        check: Callable[[Any, str], dict[str, Any]],
        total: float,
    ) -> dict[str, Any]:
        """:meth:`_get_once` on the lean path: the same answers, the same errors."""
        started = time.monotonic()
        try:
            answer = await lean.get(head, total)
        except Incomplete as exc:
            elapsed = time.monotonic() - started
            if exc.timed_out:
                raise no_whole_answer("GET", path, elapsed, exc.status, exc.body) from None
            raise _broken(
                "GET", path, exc.status, len(exc.body), exc.cause, elapsed, exc.sample
            ) from None
        if answer.cookies:
            # The server sets a cookie: the ApiClient's jar keeps it, and from now on the
            # reads go on aiohttp's path, which sends it.
            from yarl import URL

            jar = self._api.rest_client.pool_manager.cookie_jar
            jar.update_cookies_from_headers(list(answer.cookies), URL(self.server))
        route = f"GET {path}"
        if 200 <= answer.status < 300:
            return check(decode_json(answer.body, route), route)
        raise _answer_error(answer.status, _RetryAfter(answer.headers), answer.body, "GET", path)

    # -- verbs ------------------------------------------------------------

    async def get(
        self,
        res: Resource,
        name: str,
        namespace: str | None = None,
        *,
        retry: RetryPolicy | None = None,
        not_older_than: str | None = None,
    ) -> dict[str, Any]:
        """The object; flakes are retried until the caller's deadline (a GET is idempotent).

        ``not_older_than`` (a resourceVersion a watch event showed) lets the API server
        answer from its watch cache with a state at least that new, instead of a quorum
        read from etcd: still the server's answer, not ours, and a third cheaper. That
        is what a waiter's confirming read after an event needs. (Two such reads at once,
        the first answer taken, measured slower: the server pays twice at the moment it
        is busiest.)
        """
        path = res.path(namespace, name)
        query = {"resourceVersion": not_older_than} if not_older_than else None
        return await self.read(path, check_object, retry, query=query)

    async def list(
        self,
        res: Resource,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        timeout: float = REQUEST_TIMEOUT,
        retry: RetryPolicy | None = None,
        not_older_than: str | None = None,
    ) -> dict[str, Any]:
        """The list answer, ``items`` always a list; flakes retried as for :meth:`get`.

        ``not_older_than`` asks for a state at least as new as that resourceVersion
        (``resourceVersionMatch=NotOlderThan``), as :meth:`get` does.
        """
        path = res.path(namespace)
        query = {"labelSelector": label_selector, "fieldSelector": field_selector}
        if not_older_than:
            query |= {"resourceVersion": not_older_than, "resourceVersionMatch": "NotOlderThan"}
        return await self.read(path, check_list, retry, timeout=timeout, query=query)

    async def create(
        self, res: Resource, body: dict[str, Any], namespace: str | None = None
    ) -> dict[str, Any]:
        path = res.path(namespace)
        return check_object(await self.request("POST", path, body=body), f"POST {path}")

    async def patch(
        self,
        res: Resource,
        name: str,
        body: dict[str, Any],
        namespace: str | None = None,
        *,
        subresource: str | None = None,
    ) -> dict[str, Any]:
        path = res.path(namespace, name, subresource)
        answer = await self.request(
            "PATCH", path, body=body, content_type="application/merge-patch+json"
        )
        return check_object(answer, f"PATCH {path}")

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
        path = PODS.path(namespace, name, "log")
        status, headers, raw = await self.exchange(
            "GET",
            path,
            accept="text/plain, application/json, */*",
            query={
                "container": container,
                "tailLines": tail_lines,
                "previous": "true" if previous else None,
                "limitBytes": limit_bytes,
            },
        )
        text = raw.decode("utf-8", "replace")
        if not 200 <= status < 300:
            try:
                body: Any = decode_json(raw, f"GET {path}")
            except ResponseFormatError:
                body = text
            raise status_error(
                status,
                clip(_status_message(body, f"HTTP {status}"), 300),
                method="GET",
                path=path,
                body=body,
            )
        return text

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
        on_open: Callable[[], None] | None = None,
    ) -> AsyncIterator[WatchEvent]:
        """One watch connection: yield typed events until the server ends the stream.

        ``on_open`` is called once the server has accepted the watch (200): from then
        on, the stream is live, events or not.

        Both timeouts are set: ``timeoutSeconds`` asks the server to end the
        stream cleanly, and the client's read timeout (``client_timeout``: the
        longest silence taken) catches a server or a network that silently stops
        talking (a half-open connection would otherwise hang the watcher forever).
        A stream that goes on past ``timeoutSeconds`` and :data:`WATCH_MARGIN` more is
        ended too (a peer trickling a line, a chunk extension or a trailer a byte at a
        time is never silent), and so is one that sends more than a few interim (1xx)
        answers, a chunk header over 64 KiB or a line over :data:`MAX_LINE` bytes.
        Each line is parsed by :func:`parse_watch_line`; a line it refuses ends the
        stream with that :class:`ProtocolError`, every other failure is a
        :class:`TransportError` or the :class:`HTTPStatusError` the server answered.
        Only the server ends a stream cleanly: one this client closes under its consumer
        (:meth:`aclose`) is a :class:`TransportError` that says so, on either path.

        Where reads go the lean way (see :meth:`_lean_pool`), so does the watch
        (:mod:`._watch1`: a connection of its own, the answer parsed by llhttp, each line
        parsed as its bytes arrive, this generator woken once per burst): aiohttp's
        response handler, stream reader, its iterator and a line splitter are no longer
        between the bytes and the event, on the path from a change to a waiter's
        confirming read. Everywhere else the watch goes on aiohttp's session, with the
        same events and errors.
        """
        path, route, query, silence = _watch_request(
            res, namespace, resource_version, label_selector, field_selector, server_timeout
        )
        silence = client_timeout or silence
        # The server ends the stream at its timeout: one that goes on well past it is a
        # peer that never will (a line or a chunk extension trickled, never silent).
        lifetime = server_timeout + WATCH_MARGIN
        conn = await self._lean_watch(path, route, query, silence, lifetime)
        if conn is None:
            async for event in self._aiohttp_watch(path, route, query, silence, lifetime, on_open):
                yield event
            return
        try:
            if not await self._accepted(conn, path, on_open):
                async for event in self._aiohttp_watch(
                    path, route, query, silence, lifetime, on_open
                ):
                    yield event
                return
            items = conn.items
            while True:
                if items:
                    yield items.popleft()
                elif conn.failure is not None:
                    raise _stream_failure(route, conn, silence)
                elif conn.ended:
                    return
                else:
                    await conn.wait()
        finally:
            conn.close()
            # Gone once its transport is (a TLS goodbye waits for the peer's): until then
            # aclose still waits for it, and cuts it past CLOSE_GRACE.
            if conn.lost.done():
                self._watching.discard(conn)
            else:
                conn.lost.add_done_callback(lambda _: self._watching.discard(conn))

    async def _accepted(
        self, conn: WatchConnection[WatchEvent], path: str, on_open: Callable[[], None] | None
    ) -> bool:
        """Wait for a lean watch's answer head: True once the server accepted the watch
        (``on_open`` called), False if the stream is encoded (the caller goes on aiohttp's
        path, as every later watch will); the server's refusal or a failure is raised."""
        while conn.status is None and conn.failure is None:
            await conn.wait()
        if conn.status is None:
            raise _unanswered(path, conn.failure)
        if conn.encoded:
            # The server encodes the stream, although the lean path only decodes whole
            # answers: this watch and every later one go on aiohttp's path.
            self._lean_watches = False
            conn.close()
            return False
        self._keep_cookies(conn)
        if conn.status != 200:
            with anyio.move_on_after(REQUEST_TIMEOUT):
                while not conn.ended and conn.failure is None:
                    await conn.wait()
            headers = {n.decode("latin-1"): v.decode("latin-1") for n, v in conn.headers}
            raise _answer_error(conn.status, _RetryAfter(headers), bytes(conn.body), "GET", path)
        conn.streaming = True
        if on_open is not None:
            on_open()
        return True

    async def _lean_watch(
        self,
        path: str,
        route: str,
        query: dict[str, Any],
        silence: float,
        lifetime: float,
    ) -> WatchConnection[WatchEvent] | None:
        """A watch on the lean path (:mod:`._watch1`), where a read would go that way (see
        :meth:`_lean_pool`) and the request can be sent exactly as aiohttp would; None
        otherwise (aiohttp's path then). The same headers as :meth:`open` sends (the
        ApiClient's, its cookie, the ``Authorization`` of its own auth hook)."""
        reader, _ = self._reader or self._open_reader()
        lean = self._lean
        if lean is None or not self._lean_watches or not lean.can_take():
            return None
        if len(reader.cookie_jar):
            return None
        params = [(k, _query_value(v)) for k, v in query.items() if v is not None]
        head = self._lean_head(lean, path, params, *await self._auth())
        if head is None:
            return None

        def parse(line: bytes) -> WatchEvent:
            return parse_watch_line(line, route)

        self.requests_sent += 1
        try:
            conn = await open_watch(lean, head, parse, silence, MAX_LINE, lifetime)
        except Exception as exc:  # refused, unreachable, a TLS handshake that failed
            raise _unanswered(path, exc) from None
        self.watches_opened += 1
        self._watching.add(conn)
        return conn

    def _keep_cookies(self, conn: WatchConnection[WatchEvent]) -> None:
        """A cookie the server sets on a watch goes to the ApiClient's jar, as aiohttp
        would keep it; from then on, reads and watches go on aiohttp's path, which sends it."""
        cookies = [v.decode("latin-1") for n, v in conn.headers if n == b"set-cookie"]
        if cookies:
            from yarl import URL

            jar = self._api.rest_client.pool_manager.cookie_jar
            jar.update_cookies_from_headers(cookies, URL(self.server))

    async def _aiohttp_watch(
        self,
        path: str,
        route: str,
        query: dict[str, Any],
        client_timeout: float,
        lifetime: float,
        on_open: Callable[[], None] | None,
    ) -> AsyncIterator[WatchEvent]:
        """:meth:`watch_stream` on aiohttp's path (a proxy, a cookie, netrc): the same
        events, the same errors."""
        import aiohttp

        response = await self.open(
            "GET",
            path,
            query=query,
            timeout=aiohttp.ClientTimeout(
                total=lifetime, sock_connect=10, sock_read=client_timeout
            ),
        )
        self.watches_opened += 1
        self._streams.add(response)
        try:
            if response.status != 200:
                raise await _status_answer(response, "GET", path)
            if on_open is not None:
                on_open()
            try:
                async for line in _lines(response, route, client_timeout, lifetime):
                    yield parse_watch_line(line, route)
            except TransportError:
                if self._closing:
                    raise _closed_here(route) from None
                raise
        finally:
            self._streams.discard(response)
            response.release()


async def _close_all(conns: set[WatchConnection[WatchEvent]]) -> None:
    """Close lean watches still open (:func:`._http1.close_all`) and forget them."""
    await close_all(conns)
    conns.clear()


def _watch_request(
    res: Resource,
    namespace: str | None,
    resource_version: str | None,
    label_selector: str | None,
    field_selector: str | None,
    server_timeout: int,
) -> tuple[str, str, dict[str, Any], float]:
    """A watch's path, route, query and default longest silence (the server's own
    timeout and 15 s)."""
    path = res.path(namespace)
    query = {
        "watch": "true",
        "resourceVersion": resource_version,
        "allowWatchBookmarks": "true",
        "timeoutSeconds": server_timeout,
        "labelSelector": label_selector,
        "fieldSelector": field_selector,
    }
    return path, f"WATCH {path}", query, server_timeout + 15.0


#: How long past the server's own ``timeoutSeconds`` a watch stream may go on before it
#: is ended here (:class:`._watch1.Outlived`): as the default longest silence's margin.
WATCH_MARGIN = 15.0


def _outlived(route: str, lifetime: float) -> TransportError:
    return TransportError(
        f"{route}: the stream went on for over {lifetime:g} s, past the server's own "
        f"timeout and {WATCH_MARGIN:g} s more",
        url=route,
    )


def _closed_here(route: str, what: str = "the stream", url: str | None = None) -> TransportError:
    """What this client's own close (:meth:`KubeClient.aclose`) cut short: a watch (not the
    server's end of the stream, which a reader would take as a clean end and reopen) or a
    read (``_read_closed``); said as this side's doing, and neither reopened nor retried
    (``closed_here``)."""
    error = TransportError(
        f"{route}: {what} was closed by this client, not by the server", url=url or route
    )
    error.closed_here = True
    return error


def _read_closed(path: str) -> TransportError:
    return _closed_here(f"GET {path}", "the connection", url=path)


def _unanswered(path: str, exc: BaseException | None) -> ClientError:
    """A lean watch that failed before its answer's head: as :meth:`KubeClient.open`
    says it on aiohttp's path."""
    if isinstance(exc, TimeoutError):
        return RequestTimeout(
            f"GET {path}: no answer in time (TimeoutError)", method="GET", url=path
        )
    return _broken("GET", path, None, 0, exc or ConnectionError("no answer"))


def _stream_failure(route: str, conn: WatchConnection[WatchEvent], silence: float) -> BaseException:
    """What ended a lean watch after its 200, as :func:`_lines` says it on aiohttp's path:
    a line ``parse`` refused is its own error; an endless line a :class:`ProtocolError`; a
    silence or a broken connection a :class:`TransportError`."""
    exc = conn.failure
    assert exc is not None
    if conn.refused:
        return exc
    if isinstance(exc, LineTooLong):
        return ProtocolError(
            f"{route}: a watch line longer than {MAX_LINE} bytes",
            route=route,
            excerpt=excerpt(exc.start),
        )
    if isinstance(exc, TimeoutError):
        return TransportError(
            f"{route}: the stream was silent for more than {silence:g} s", url=route
        )
    if isinstance(exc, ClosedHere):
        return _closed_here(route)
    if isinstance(exc, Outlived):
        return _outlived(route, exc.lifetime)
    return TransportError(
        f"{route}: the stream broke ({type(exc).__name__}: {clip(str(exc), 200)})", url=route
    )


#: The longest watch line taken: far above any real object (etcd refuses objects over
#: 1.5 MiB), and a bound on what a peer that never sends a newline can make us hold.
MAX_LINE = 16 * 1024 * 1024


async def _lines(
    response: Any, route: str, silence: float, lifetime: float | None = None
) -> AsyncIterator[bytes]:
    """The stream's non-empty lines. A silence longer than ``silence`` (aiohttp's
    ``sock_read``), a stream past its ``lifetime`` (aiohttp's ``total``) or a broken
    connection is a :class:`TransportError`; an endless line a :class:`ProtocolError`."""
    # The line begun grows in place: a peer that trickles a long line in small reads must
    # not make each read copy the whole line so far (quadratic in the line's pieces).
    # Its bound is checked before a read is added, not after: the line begun never holds
    # more than MAX_LINE bytes, and no line over it is yielded, however the reads fall.
    pending = bytearray()
    try:
        async for chunk in response.content.iter_any():
            if b"\n" not in chunk:
                if len(pending) + len(chunk) > MAX_LINE:
                    raise _line_too_long(route, pending or chunk)
                pending += chunk
                continue
            if pending:
                pending += chunk
                chunk = bytes(pending)
            *lines, rest = chunk.split(b"\n")
            too_long = None
            if len(chunk) > MAX_LINE:  # rare: a read longer than a line may be
                lines, too_long = upto_too_long(lines, rest, MAX_LINE)
                rest = rest if too_long is None else b""
            pending = bytearray(rest)
            for line in lines:
                if line.strip():
                    yield line
            if too_long is not None:
                raise _line_too_long(route, too_long)
    except ClientError:
        raise
    except TimeoutError as exc:
        from aiohttp import ServerTimeoutError

        if lifetime is not None and not isinstance(exc, ServerTimeoutError):
            raise _outlived(route, lifetime) from None
        raise TransportError(
            f"{route}: the stream was silent for more than {silence:g} s", url=route
        ) from None
    except Exception as exc:
        raise TransportError(
            f"{route}: the stream broke ({type(exc).__name__}: {clip(str(exc), 200)})", url=route
        ) from None
    if pending.strip():
        yield bytes(pending)


def _too_large() -> AnswerTooLarge:
    """An answer body over :data:`MAX_BODY` on aiohttp's path, as the lean path says it: a
    peer's endless body, or a few bytes of gzip that stand for gigabytes (aiohttp decodes
    in bounded steps; this bounds what they add up to)."""
    return AnswerTooLarge(f"an answer body over {MAX_BODY} bytes")


def _line_too_long(route: str, start: bytes | bytearray) -> ProtocolError:
    return ProtocolError(
        f"{route}: a watch line longer than {MAX_LINE} bytes",
        route=route,
        excerpt=excerpt(bytes(start[:200])),
    )


async def _status_answer(response: Any, method: str, path: str) -> ClientError:
    """The error for a non-2xx answer, its body read within :data:`REQUEST_TIMEOUT`."""
    received = bytearray()
    with anyio.move_on_after(REQUEST_TIMEOUT):
        try:
            async for chunk in response.content.iter_any():
                received += chunk
                if len(received) >= MAX_ERROR_BODY:
                    del received[MAX_ERROR_BODY:]  # enough to quote: the rest is not read
                    break
        except Exception:
            pass
    try:
        body: Any = decode_json(bytes(received), f"{method} {path}")
    except ResponseFormatError:
        body = bytes(received).decode("utf-8", "replace")
    err = status_error(
        response.status,
        clip(_status_message(body, f"HTTP {response.status}"), 300),
        method=method,
        path=path,
        body=body,
    )
    err.retry_after = parse_retry_after(response.headers.get("Retry-After"))
    return err


def _broken(
    method: str,
    path: str,
    status: int | None,
    received: int,
    exc: BaseException,
    elapsed: float | None = None,
    arrived: bytes = b"",
) -> ClientError:
    """The transport failed: before an answer (``status`` None) or while reading its body;
    ``elapsed`` and what ``arrived`` on the wire are quoted when known. A peer past a bound
    (endless interim answers or framing, a head or body over its size) breaks the protocol
    on purpose or by a defect: a :class:`LimitExceeded`, which a read retries only a few
    times (``RetryPolicy.tries_past_bound``), since another try would likely meet it again."""
    over = _over_bound(exc)
    if over is not None:
        route = f"{method} {path}"
        return LimitExceeded(
            f"{route}: {over}", route=route, excerpt=excerpt(arrived) if arrived else ""
        )
    detail = f"{type(exc).__name__}: {excerpt(str(exc), 200)}"
    if elapsed is not None:
        detail += f", after {elapsed:.3f} s"
    if arrived:
        detail += f", received {excerpt(arrived)}"
    return TransportError(
        f"{method} {path}: {detail}"
        if status is None
        else f"{method} {path}: reading the answer failed after {received} bytes ({detail})",
        method=method,
        url=path,
    )


def _over_bound(exc: BaseException) -> str | None:
    """What bound a transport failure is a peer's going past, if it is one: ours (interim
    answers, a head, framing, a body's size) or aiohttp's parser's (a line over 8190 bytes,
    which aiohttp reports as a 400 of its own, the parser's error two causes down)."""
    if isinstance(exc, InterimFlood | AnswerTooLarge):
        return str(exc)
    from aiohttp.http_exceptions import LineTooLong

    cause: BaseException | None = exc
    for _ in range(4):
        if cause is None:
            return None
        if isinstance(cause, LineTooLong):
            limit = cause.args[1] if len(cause.args) > 1 else "its"
            return f"a line of the answer's head or trailer over {limit} bytes"
        cause = cause.__cause__ or cause.__context__
    return None


def _answer_error(status: int, headers: Any, raw: bytes, method: str, path: str) -> ClientError:
    """The :class:`HTTPStatusError` for a non-2xx answer: the server's own message, its
    ``Retry-After``."""
    try:
        body: Any = decode_json(raw, f"{method} {path}")
    except ResponseFormatError:
        body = raw.decode("utf-8", "replace")
    err = status_error(
        status,
        clip(_status_message(body, f"HTTP {status}"), 300),
        method=method,
        path=path,
        body=body,
    )
    err.retry_after = parse_retry_after(headers.get("Retry-After"))
    return err


class _RetryAfter:
    """The lean path's headers, as :func:`_answer_error` asks them (names in any case)."""

    def __init__(self, headers: dict[str, str]) -> None:
        self._headers = headers

    def get(self, name: str, default: str | None = None) -> str | None:
        return self._headers.get(name.lower(), default)


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
