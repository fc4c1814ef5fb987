"""One TLS context for every HTTP client of a run.

Building a verifying context loads the whole CA bundle, about 15 ms of CPU. A run
with fifty deployments has a backend client and an inference client per deployment,
so building one each would cost more than the rest of the run's client work. The
context is built on first use, honours ``SSL_CERT_FILE``/``SSL_CERT_DIR`` as httpx
does, and is safe to share: settings are fixed before the first connection.
"""

from __future__ import annotations

import functools
import ssl


@functools.cache
def default_context() -> ssl.SSLContext:
    import httpx

    return httpx.create_ssl_context()
