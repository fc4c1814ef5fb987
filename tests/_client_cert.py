"""A client certificate and its key, made for a test: inline key material in a kubeconfig.

Made with ``openssl`` at test time (no private key is kept in the tree, where secret
scanners and the redactor's own PEM pattern would take it for a leak).
"""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path

import pytest


def client_key_pair(folder: Path) -> tuple[bytes, bytes]:
    """A self-signed EC certificate for ``127.0.0.1`` and its private key, PEM:
    (certificate, key). It serves as a client's, a server's and the CA, all at once."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a client key")
    key, cert = folder / "client.key", folder / "client.crt"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
            "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj", "/CN=orchestrator-test",
            "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    pair = cert.read_bytes(), key.read_bytes()
    key.unlink()
    cert.unlink()
    return pair


def with_inline_client_key(user: dict[str, object], cert: bytes, key: bytes) -> dict[str, object]:
    """``user`` (a kubeconfig's) that also carries ``cert`` and ``key`` inline, as kind
    writes them."""
    return {
        **user,
        "client-certificate-data": base64.b64encode(cert).decode(),
        "client-key-data": base64.b64encode(key).decode(),
    }
