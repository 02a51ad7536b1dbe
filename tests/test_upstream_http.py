"""The upstream over the SDK's aiohttp transport names each broken connection for what it is.

The adapter as shipped maps every aiohttp connection error to a connect timeout. Each test runs a real TCP
server on a loopback port that fails one way, and opens a real stream through OpenAIUpstream (the openai
SDK over aiohttp): refused, dropped before the answer, dropped mid-answer. Each must read as unavailable,
never as a timeout (silences are tests/test_upstream_deadlines.py's).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from audiochat.v1 import audiochat_pb2 as pb
from service.errors import TurnFailed
from service.upstream import Deadlines, OpenAIUpstream

DEADLINES = Deadlines(connect_seconds=2.0, first_byte_seconds=2.0, idle_seconds=2.0, max_retries=0)
PARAMS = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
EVENT = b'data: {"choices":[{"index":0,"delta":{"content":"Hel"}}]}\n\n'
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


async def _read_request(reader: asyncio.StreamReader) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        ),
        0,
    )
    await reader.readexactly(length)


@asynccontextmanager
async def _server(handler: Handler) -> AsyncIterator[OpenAIUpstream]:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    upstream = OpenAIUpstream("sk-test", f"http://127.0.0.1:{port}/v1", DEADLINES)
    try:
        yield upstream
    finally:
        await upstream.close()
        server.close()
        await server.wait_closed()


async def _read_all(upstream: OpenAIUpstream, received: list[object]) -> None:
    async with upstream.open(PARAMS) as stream:
        async for chunk in stream.chunks():
            received.append(chunk)


async def _failure(upstream: OpenAIUpstream) -> tuple[pb.ErrorCode.ValueType, str, int]:
    """Open and read the stream; the failure's code and message, and how many chunks arrived first."""
    received: list[object] = []
    with pytest.raises(TurnFailed) as failed:
        await _read_all(upstream, received)
    return failed.value.failure.code, failed.value.failure.message, len(received)


async def test_refused_connection_is_unavailable() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    upstream = OpenAIUpstream("sk-test", f"http://127.0.0.1:{port}/v1", DEADLINES)
    try:
        code, message, _ = await _failure(upstream)
    finally:
        await upstream.close()
    assert code == pb.ERROR_CODE_UNAVAILABLE and "could not be reached" in message


async def test_connection_dropped_before_the_answer_is_unavailable() -> None:
    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)

    async with _server(drop) as upstream:
        code, _, received = await _failure(upstream)
    assert code == pb.ERROR_CODE_UNAVAILABLE and received == 0


async def test_connection_dropped_mid_answer_is_unavailable() -> None:
    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(HEAD + _chunk(EVENT) + b"40\r\npartial")
        await writer.drain()

    async with _server(drop) as upstream:
        code, message, received = await _failure(upstream)
    assert (code, received) == (pb.ERROR_CODE_UNAVAILABLE, 1) and "broke mid-answer" in message
