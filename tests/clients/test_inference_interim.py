"""The model's ``url`` route meets the same bounds as the backend's client.

The route went through httpx's own transport, which takes any number of interim (1xx)
answers: a model server (or a proxy before it) sending them without end held the
Inference phase for the request's 60 s deadline, then the 30 s given to a loading
model, one try after another. It now goes through the backend's transport
(``AiohttpTransport``: interim answers, framing, gzip, an answer's size, all bounded):
past a few interim answers the request ends at once with a :class:`LimitExceeded`
naming the route, and a loading model's retries do not take it for a model not yet up.
The same real model server answers it (tests/sandbox/test_model_server.py).

The peer is a plain asyncio server that writes interim answers until the client goes.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from test_interim_answers import INTERIM, endless_interim
from test_lean_reads import HANG, Conn, serve  # noqa: F401  (a fixture)

from orchestrator.clients import InferenceClient, InferenceRoute, LimitExceeded
from orchestrator.clients._http1 import MAX_INTERIM

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("interim", list(INTERIM.values()), ids=list(INTERIM))
async def test_endless_interim_answers_from_the_model_end_the_request_at_once(
    serve: Any, streamed: bool, interim: bytes
) -> None:
    async def hostile(conn: Conn) -> None:
        await endless_interim(conn, interim)

    peer = await serve(hostile)
    model = InferenceClient(
        InferenceRoute("url", f"http://127.0.0.1:{peer.port}"), request_timeout=HANG
    )
    waits: list[str] = []
    try:
        # The request's own deadline as far as the test's: only the count can end it.
        with anyio.fail_after(HANG), pytest.raises(LimitExceeded) as err:
            call = model.complete if streamed else model.chat
            await call(
                namespace="ns",
                service="s",
                port=80,
                model="m",
                prompt="hi",
                max_tokens=4,
                on_wait=waits.append,
            )
    finally:
        await model.aclose()
    assert str(err.value).startswith(f"POST http://127.0.0.1:{peer.port}/v1/chat/completions")
    assert f"over {MAX_INTERIM} interim (1xx) answers" in str(err.value)
    assert len(peer.requests) == 1 and waits == []  # not taken for a model still loading
    await peer.until(lambda: peer.closed == 1)
