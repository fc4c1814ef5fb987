"""Shared fixtures: tests run on asyncio through anyio's pytest plugin."""

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session", autouse=True)
def _stop_clusters():
    """Wait, once, for the test clusters that tests stopped in the background."""
    from _testcluster import wait_all

    yield
    wait_all()
