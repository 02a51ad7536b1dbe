"""The upstream's HTTP client: the openai SDK's aiohttp transport, with its errors classified exactly.

The SDK's aiohttp adapter (`openai[aiohttp]`) reads a streamed body for a fraction of what httpcore, h11
and anyio cost per read (make bench), but it maps every aiohttp connection error to httpx's
`ConnectTimeout`: a refused connection, or one the upstream dropped mid-answer, would reach clients as
"the upstream did not answer in time". This keeps the adapter and corrects the class from the aiohttp
exception it kept as the cause, both when the request is sent and while the body streams.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx2
import openai


def exact(exc: httpx2.TransportError) -> httpx2.TransportError:
    """The httpx error that says what really happened to an aiohttp request."""
    cause = exc.__cause__
    if not isinstance(exc, httpx2.TimeoutException) or isinstance(cause, asyncio.TimeoutError):
        return exc  # a real timeout (aiohttp's timeouts are asyncio.TimeoutError), or already exact
    corrected: httpx2.TransportError
    if isinstance(cause, aiohttp.ClientConnectorError):
        corrected = httpx2.ConnectError(str(exc))  # refused, unreachable, DNS
    elif isinstance(cause, aiohttp.ClientConnectionError):
        corrected = httpx2.ReadError(str(exc))  # the connection broke after it was made
    else:
        return exc
    corrected.__cause__ = cause
    return corrected


class _ExactStream(httpx2.AsyncByteStream):
    """A response body whose read errors are classified by `exact`."""

    def __init__(self, inner: httpx2.AsyncByteStream) -> None:
        self._inner = inner

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._inner:
                yield chunk
        except httpx2.TransportError as exc:
            raise exact(exc) from exc.__cause__

    async def aclose(self) -> None:
        await self._inner.aclose()


class _ExactTransport(httpx2.AsyncBaseTransport):
    """The adapter's transport with `exact` errors on the request and on its body."""

    def __init__(self, inner: httpx2.AsyncBaseTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        try:
            response = await self._inner.handle_async_request(request)
        except httpx2.TransportError as exc:
            raise exact(exc) from exc.__cause__
        assert isinstance(response.stream, httpx2.AsyncByteStream)
        response.stream = _ExactStream(response.stream)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


class AioHttpClient(openai.DefaultAioHttpClient):
    """The SDK's aiohttp client (its defaults: connection limits, redirects) with exact errors."""

    # httpx builds its transport here; the SDK's adapter overrides the same hook to plug aiohttp in.
    def _init_transport(self, *args: Any, **kwargs: Any) -> httpx2.AsyncBaseTransport:
        return _ExactTransport(super()._init_transport(*args, **kwargs))
