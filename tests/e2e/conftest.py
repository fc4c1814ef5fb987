"""Fixtures for the end-to-end tests live in e2e_harness.py, shared with the fault suite."""

from e2e_harness import faults, kubeconfig, sandbox  # noqa: F401  (pytest fixtures)
