"""The KubeFoundry API stand-in (v0.2 routes used by the KAITO flow)."""

from .app import KubeFoundryServer, create_app

__all__ = ["KubeFoundryServer", "create_app"]
