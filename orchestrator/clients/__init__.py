"""Clients for the systems the orchestrator talks to.

- :class:`KubeFoundryClient`: the KubeFoundry backend's HTTP API (httpx).
- :class:`KubeClient` and :func:`watch`: Kubernetes over kubernetes-asyncio,
  with a list-then-watch loop that survives cut streams and 410 Gone.
- :class:`InferenceClient`: the served model's chat-completion endpoint (one streamed
  request gives the timing and the verdict), and :func:`validate_completion`, the
  schema and the quality gate beyond it (each failed check a named :class:`Violation`).

The backend's answers come back as typed models (:class:`DeploymentStatus`,
:class:`ProviderStatus`, ...), exported here so that a flow can name them.
They know nothing of the engine or of any flow.
"""

from ._errors import (
    ClientError,
    Conflict,
    HTTPStatusError,
    LimitExceeded,
    NotFound,
    ProtocolError,
    RequestTimeout,
    ResponseFormatError,
    ServerError,
    TooManyRequests,
    TransportError,
    Unauthorized,
    is_retryable,
)
from ._hub import WatchHub, compile_selector
from ._models import (
    CatalogModel,
    ClusterStatus,
    Condition,
    Created,
    Deleted,
    DeploymentLogs,
    DeploymentPod,
    DeploymentPods,
    DeploymentStatus,
    Health,
    InstallResult,
    InstallStep,
    ProviderStatus,
    Replicas,
)
from ._retry import NO_RETRY, FailureListener, RetryPolicy, failures_heard_by
from ._watch import Backoff, WatchEvent, watch
from .inference import (
    ChatCompletionResponse,
    Expectations,
    InferenceClient,
    InferenceResult,
    InferenceRoute,
    InvalidCompletion,
    Violation,
    validate_completion,
)
from .kube import CRDS, EVENTS, NAMESPACES, PODS, SECRETS, SERVICES, KubeClient, Resource
from .kubefoundry import Exchange, Journal, KubeFoundryClient

__all__ = [
    "Backoff",
    "CRDS",
    "CatalogModel",
    "ChatCompletionResponse",
    "ClientError",
    "ClusterStatus",
    "Condition",
    "Conflict",
    "Created",
    "Deleted",
    "DeploymentLogs",
    "DeploymentPod",
    "DeploymentPods",
    "DeploymentStatus",
    "EVENTS",
    "Exchange",
    "Expectations",
    "FailureListener",
    "HTTPStatusError",
    "Health",
    "InferenceClient",
    "InferenceResult",
    "InferenceRoute",
    "InstallResult",
    "InstallStep",
    "InvalidCompletion",
    "Journal",
    "KubeClient",
    "KubeFoundryClient",
    "NAMESPACES",
    "NO_RETRY",
    "NotFound",
    "PODS",
    "LimitExceeded",
    "ProtocolError",
    "ProviderStatus",
    "Replicas",
    "RequestTimeout",
    "Resource",
    "ResponseFormatError",
    "RetryPolicy",
    "SECRETS",
    "SERVICES",
    "ServerError",
    "TooManyRequests",
    "TransportError",
    "Unauthorized",
    "Violation",
    "WatchEvent",
    "WatchHub",
    "compile_selector",
    "failures_heard_by",
    "is_retryable",
    "validate_completion",
    "watch",
]
