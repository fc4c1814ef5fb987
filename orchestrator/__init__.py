"""Prove, end to end, that a KubeFoundry installation can deploy and serve a model."""

from ._version import __version__

__all__ = ["__version__"]
