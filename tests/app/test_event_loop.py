"""The run's event loop: asyncio's own, uvloop when asked for (and installed)."""

from __future__ import annotations

import asyncio
import sys

import pytest

from orchestrator._loop import ENV, LoopChoiceError, loop_factory, loop_name, run


async def _which() -> str:
    await asyncio.sleep(0)
    return loop_name(asyncio.get_running_loop())


def test_the_default_loop_unless_uvloop_is_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    assert loop_factory() is None
    assert run(_which()) == "asyncio"
    monkeypatch.setenv(ENV, " AsyncIO ")
    assert run(_which()) == "asyncio"


def test_uvloop_when_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    uvloop = pytest.importorskip("uvloop")
    monkeypatch.setenv(ENV, "uvloop")
    assert loop_factory() is uvloop.new_event_loop
    assert run(_which()) == "uvloop"


def test_uvloop_asked_for_but_not_installed_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop -> ImportError
    coro = _which()
    with pytest.raises(LoopChoiceError, match=r"uvloop is not installed .*orchestrator\[uvloop\]"):
        run(coro, choice="uvloop")
    assert coro.cr_frame is None  # closed: no "never awaited" warning on top of the error


def test_an_unknown_loop_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "trio")
    with pytest.raises(
        LoopChoiceError, match=f"{ENV} \\(environment\\): expected asyncio or uvloop"
    ):
        loop_factory()
