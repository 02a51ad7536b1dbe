"""The OpenAI upstream: opens a streamed chat completion and yields its chunks as plain mappings.

The official SDK keeps what it is good at (auth, base_url, retries before the stream starts, typed HTTP
errors, closing the connection); the body is decoded here because `delta.audio` is outside the SDK's
typed schema and because building a pydantic object per 100 ms of audio is wasted work on the hot path.
"""

from __future__ import annotations

import email.utils
import json
import logging
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol

import httpx2
import openai

from audiochat.v1 import audiochat_pb2 as pb
from service.errors import TurnFailed, UpstreamFailure, redact, upstream_error
from service.sse_decoder import DONE, SSEDecoder

log = logging.getLogger(__name__)

# GET /models is a listing, not a turn: a short deadline, and a cap on what a client gets.
MODELS_TIMEOUT_SECONDS = 10.0
MAX_MODELS = 1000


class ChunkStream:
    """One open upstream stream; iterate `chunks()` once."""

    def __init__(self, response: openai.AsyncAPIResponse[Any]) -> None:
        self._response = response
        self.request_id: str = response.headers.get("x-request-id", "")
        self.saw_done = False

    async def chunks(self) -> AsyncIterator[object]:
        """Decoded JSON chunks in arrival order (the normalizer checks their shape).

        Raises TurnFailed if the connection breaks or a frame is not JSON (`upstream_malformed`).
        """
        decoder = SSEDecoder()
        try:
            async for raw in self._response.iter_bytes():
                for data in decoder.feed(raw):
                    chunk = self._decode(data)
                    if chunk is not None:
                        yield chunk
                    if self.saw_done:
                        return
            for data in decoder.close():
                chunk = self._decode(data)
                if chunk is not None:
                    yield chunk
        except httpx2.TimeoutException as exc:
            raise TurnFailed(
                UpstreamFailure(pb.ERROR_CODE_DEADLINE_EXCEEDED, "the upstream stopped sending", True)
            ) from exc
        except httpx2.HTTPError as exc:
            raise TurnFailed(
                UpstreamFailure(pb.ERROR_CODE_UNAVAILABLE, "the upstream connection broke mid-answer", True)
            ) from exc

    def _decode(self, data: bytes) -> object:
        if data == DONE:
            self.saw_done = True
            return None
        try:
            return json.loads(data)
        except ValueError as exc:
            # Keep-alives come as SSE comments, which never reach here: a data frame that is not JSON is
            # a cut or corrupted chunk, and what it held is missing from the answer.
            log.warning("malformed upstream frame of %d bytes: %s", len(data), exc)
            failure = UpstreamFailure(
                pb.ERROR_CODE_UPSTREAM_MALFORMED,
                f"the upstream sent a frame that is not JSON ({len(data)} bytes); the answer is incomplete",
                True,
            )
            raise TurnFailed(failure) from None


class Upstream(Protocol):
    """Something that opens a streamed chat completion for the given request parameters."""

    def open(self, params: Mapping[str, Any]) -> AbstractAsyncContextManager[ChunkStream]:
        """Open the stream; raise TurnFailed if the upstream refuses before streaming."""
        ...

    async def list_models(self) -> list[pb.Model] | None:
        """The upstream's models, or None when it has no list; raise TurnFailed if it fails."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


class OpenAIUpstream:
    """Chat Completions over the official SDK, against OpenAI or any compatible base_url."""

    def __init__(self, api_key: str, base_url: str | None, timeout_seconds: float, max_retries: int) -> None:
        self._client = openai.AsyncOpenAI(
            api_key=api_key,
            base_url=base_url,
            timeout=httpx2.Timeout(timeout_seconds, connect=5.0),
            max_retries=max_retries,
        )

    @asynccontextmanager
    async def open(self, params: Mapping[str, Any]) -> AsyncIterator[ChunkStream]:
        """Open the stream; closing the context closes the HTTP connection at once."""
        try:
            manager = self._client.chat.completions.with_streaming_response.create(**params)
            response = await manager.__aenter__()
        except openai.APIError as exc:
            raise TurnFailed(failure_from_openai(exc)) from exc
        try:
            yield ChunkStream(response)
        finally:
            # Closing mid-body drops the connection: Chat Completions has no cancel endpoint.
            await manager.__aexit__(None, None, None)

    async def list_models(self) -> list[pb.Model] | None:
        """The upstream's models (at most MAX_MODELS); None when it has no list (404 or 405)."""
        client = self._client.with_options(timeout=MODELS_TIMEOUT_SECONDS, max_retries=0)
        try:
            page = await client.models.list()
        except openai.APIStatusError as exc:
            if exc.status_code in (404, 405):
                return None
            raise TurnFailed(failure_from_openai(exc)) from exc
        except openai.APIError as exc:
            raise TurnFailed(failure_from_openai(exc)) from exc
        models = []
        for entry in page.data[:MAX_MODELS]:
            model = pb.Model(id=entry.id)
            if isinstance(getattr(entry, "created", None), int):
                model.created = entry.created
            if isinstance(getattr(entry, "owned_by", None), str):
                model.owned_by = entry.owned_by
            models.append(model)
        return models

    async def close(self) -> None:
        """Close the SDK's connection pool."""
        await self._client.close()


def failure_from_openai(exc: openai.APIError) -> UpstreamFailure:
    """Classify an SDK error into the turn error a client sees."""
    if isinstance(exc, openai.APITimeoutError):
        return UpstreamFailure(pb.ERROR_CODE_DEADLINE_EXCEEDED, "the upstream did not answer in time", True)
    if isinstance(exc, openai.APIConnectionError):
        return UpstreamFailure(pb.ERROR_CODE_UNAVAILABLE, "the upstream could not be reached", True)
    upstream_code = str(exc.code or exc.type or "")
    if not isinstance(exc, openai.APIStatusError):
        message, error = upstream_error(200, exc.body if isinstance(exc.body, Mapping) else {})
        return UpstreamFailure(
            pb.ERROR_CODE_UNAVAILABLE, message or redact(exc.message), True, 0, upstream_code, error
        )
    status = exc.status_code
    retry_after_ms = retry_after_ms_from_headers(exc.response.headers)
    # The SDK's message is "Error code: 400 - {...}"; the client gets the upstream's own words.
    message, error = upstream_error(status, exc.body if isinstance(exc.body, Mapping) else {})
    failure = _failure_for_status(status, message or f"the upstream answered HTTP {status}", upstream_code)
    failure.retry_after_ms = retry_after_ms if failure.retryable or status == 429 else 0
    failure.upstream = error
    return failure


def _failure_for_status(status: int, message: str, upstream_code: str) -> UpstreamFailure:
    if status == 401:
        # The upstream's message quotes part of the key: never pass it on.
        return UpstreamFailure(
            pb.ERROR_CODE_UNAUTHENTICATED,
            "the upstream refused the gateway's API key",
            False,
            0,
            upstream_code,
        )
    if status == 403:
        return UpstreamFailure(pb.ERROR_CODE_PERMISSION_DENIED, message, False, 0, upstream_code)
    if status == 408:
        return UpstreamFailure(pb.ERROR_CODE_DEADLINE_EXCEEDED, message, True, 0, upstream_code)
    if status == 429:
        retryable = upstream_code != "insufficient_quota"
        return UpstreamFailure(pb.ERROR_CODE_RESOURCE_EXHAUSTED, message, retryable, 0, upstream_code)
    if status == 409 or status >= 500:
        return UpstreamFailure(pb.ERROR_CODE_UNAVAILABLE, message, True, 0, upstream_code)
    return UpstreamFailure(pb.ERROR_CODE_INVALID_ARGUMENT, message, False, 0, upstream_code)


def retry_after_ms_from_headers(headers: Mapping[str, str]) -> int:
    """The upstream's retry delay: `retry-after-ms`, else `retry-after` in seconds or as an HTTP date."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0, round(float(millis)))
        except ValueError:
            pass
    seconds = headers.get("retry-after")
    if not seconds:
        return 0
    try:
        return max(0, round(float(seconds) * 1000))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(seconds)
    except (TypeError, ValueError):
        return 0
    return max(0, round((when.timestamp() - time.time()) * 1000))
