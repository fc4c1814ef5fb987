"""One TLS context for every HTTP client of a run, built only if a client may use it.

Building a verifying context loads the whole CA bundle, about 15 ms of CPU. A run
with fifty deployments has a backend client and an inference client per deployment,
so building one each would cost more than the rest of the run's client work. The
context is built on first use, honours ``SSL_CERT_FILE``/``SSL_CERT_DIR`` as httpx
does, and is safe to share: settings are fixed before the first connection.

A client of a plain-HTTP peer reached directly never opens a TLS connection (the
clients follow no redirects), so it gets no context at all: a run against a backend
on ``http://localhost:3001``, the usual set-up, spends none of that CPU. Where a library
insists on a context all the same (httpx's own transport builds a verifying one when
given none), it gets :func:`bare_context`: it verifies as strictly but trusts no CA, so
were it ever used, it could only fail.
"""

from __future__ import annotations

import functools
import ssl
import urllib.request
from urllib.parse import urlsplit


@functools.cache
def default_context() -> ssl.SSLContext:
    import httpx

    return httpx.create_ssl_context()


def plain_http(url: str) -> bool:
    """Whether a client of ``url`` can never open a TLS connection: an ``http`` URL, and
    no proxy in the environment (a client routes through it, and reaches an ``https://``
    proxy over TLS). A ``NO_PROXY`` list alone names no proxy, though the standard
    library lists it among them (as ``no``)."""
    if urlsplit(url).scheme.lower() != "http":
        return False
    return not [scheme for scheme in urllib.request.getproxies() if scheme != "no"]


def context_for(url: str) -> ssl.SSLContext | None:
    """The shared context for a client of ``url``, or None when it cannot need one."""
    return None if plain_http(url) else default_context()


def bare_context() -> ssl.SSLContext:
    """A client context that loads no CA bundle: certificates required and host names
    checked, as in :func:`default_context`, but no CA trusted. For a client that can never
    open a TLS connection but whose library wants a context (microseconds, not the bundle's
    milliseconds)."""
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


def context_or_bare(url: str) -> ssl.SSLContext:
    """The shared context for a client of ``url``, or a bare one when it cannot need one."""
    return context_for(url) or bare_context()
