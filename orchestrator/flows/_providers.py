"""What the KubeRay and Dynamo profiles share: the Hugging Face token Secret, and findings.

Both providers take the token from a Secret in the deployment's namespace (key
``HF_TOKEN``) that the backend never checks: without it the pods cannot start. The
backend's own route for it checks the token online, so, as the facts say for an
offline cluster, the flow makes it through the Kubernetes API before the create.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from ..clients import NAMESPACES, SECRETS, Conflict, KubeClient, NotFound
from ..engine import Finding, redactor
from ._profile import Owned

HF_SECRET = "hf-token-secret"
HF_KEY = "HF_TOKEN"
#: Where the findings are explained (each has a section of its own name).
FACTS = "docs/PROVIDERS.md"


def finding(name: str, message: str) -> Finding:
    """A finding that links to its section of docs/PROVIDERS.md."""
    return Finding(name=name, message=message, fact=f"{FACTS}#{name}")


async def ensure_token_secret(
    kube: KubeClient, namespace: str, log: Callable[[str], None]
) -> list[Owned]:
    """The namespace and the token Secret, made if missing; returns what this run made.

    The token comes from ``HF_TOKEN`` in the environment; without it the Secret holds an
    empty token, which is enough for a public model. Its value is never logged; ``log``
    gets a warning when it is too short to be masked everywhere.
    """
    made: list[Owned] = []
    try:
        await kube.get(NAMESPACES, namespace)
    except NotFound:
        try:
            await kube.create(
                NAMESPACES,
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
            )
            # Kept at cleanup: deleting a namespace takes everything in it along, and a
            # real cluster keeps it Terminating for a while.
            log(f"created namespace {namespace} (it is kept)")
        except Conflict:
            pass
    token = os.environ.get(HF_KEY, "")
    # A library user's run has not registered it: masked from now on, and a value too
    # short to be masked everywhere is said in the run's log (once: the command has
    # already said it before the run, and says nothing more here).
    redactor.register(token, HF_KEY, log)
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": HF_SECRET,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": "orchestrator"},
        },
        "stringData": {HF_KEY: token},
    }
    try:
        await kube.create(SECRETS, body, namespace)
    except Conflict:
        log(f"Secret {namespace}/{HF_SECRET} already exists: used as it is, and kept")
        return made
    made.append(Owned("Secret", SECRETS, HF_SECRET, namespace))
    where = "HF_TOKEN" if token else "no HF_TOKEN set: an empty token, enough for a public model"
    log(f"created Secret {namespace}/{HF_SECRET} ({where})")
    return made
