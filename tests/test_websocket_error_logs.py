"""WebSockets that end with an error leave nothing running: no pending task, no generator closed twice.

A real `audiochat serve` process, so its stderr shows what Python and asyncio print about leaked tasks
and async generators (those go to stderr when the garbage collector finds them, not to a logger).
"""

from __future__ import annotations

import asyncio
import gc
import json

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.processes import audiochat_serve

LEAKS = ("already running", "Task was destroyed", "never retrieved", "Exception in ASGI application")
# Each ends the conversation with an error close from the edge; the last one from the core.
BAD_MESSAGES: list[str | bytes] = [
    "not json",
    json.dumps({"type": "no-such-type"}),
    json.dumps({"type": "interrupt", "played_ms": -1}),
    json.dumps({"type": "config", "model": "again"}),
]


async def read_until_closed(ws: ClientConnection) -> None:
    while True:
        await ws.recv()


async def end_with_error(url: str, bad: str | bytes, *, mid_answer: bool) -> int:
    async with connect(url, compression=None) as ws:
        await ws.send(json.dumps({"type": "config"}))
        await ws.recv()
        if mid_answer:
            await ws.send(json.dumps({"type": "text", "text": "Tell me a long story about a dog."}))
            await ws.recv()
        await ws.send(bad)
        with pytest.raises(ConnectionClosed) as closed:
            await read_until_closed(ws)
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code


async def test_websockets_that_end_with_errors_leave_no_leaks() -> None:
    with audiochat_serve() as serve:
        line = await asyncio.to_thread(serve.wait_for, "edge listening")
        await asyncio.to_thread(serve.wait_for, "audiochat ready")
        url = f"ws://127.0.0.1:{line['port']}/v1/converse"
        codes = [
            await end_with_error(url, bad, mid_answer=mid_answer)
            for bad in BAD_MESSAGES
            for mid_answer in (False, True)
        ]
        assert all(code in (1007, 1008) for code in codes), codes
        gc.collect()
        assert serve.stop() == 0
        assert serve.process.stderr is not None
        rest = serve.process.stderr.read()
    logged = "\n".join(json.dumps(line) for line in serve.log_lines) + rest
    for leak in LEAKS:
        assert leak not in logged, f"{leak!r} in the server's stderr:\n{logged[-3000:]}"
