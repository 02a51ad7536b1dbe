"""The OpenAI upstream: opens a streamed chat completion and yields its chunks as plain mappings.

The official SDK keeps what it is good at (auth, base_url, typed HTTP errors, closing the connection);
the body is decoded here because `delta.audio` is outside the SDK's typed schema and because building a
pydantic object per 100 ms of audio is wasted work on the hot path.

Waiting is bounded phase by phase (`Deadlines`): connect, first byte, each gap between reads. The SDK's
own retries are off (they retried timeouts, tripling the wait, and slept up to a minute on `retry-after`);
retries happen here, only for failures worth retrying, and only while the total sleep stays within
`max_wait_seconds`: past it the client gets the failure and the upstream's retry delay at once.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import httpx2
import openai

from audiochat.v1 import audiochat_pb2 as pb
from service.errors import TurnFailed, UpstreamFailure, redact, upstream_error
from service.sse_decoder import DONE, EventTooLarge, SSEDecoder
from service.upstream_http import AioHttpClient

log = logging.getLogger(__name__)

# GET /models is a listing, not a turn: a short deadline, and a cap on what a client gets.
MODELS_TIMEOUT_SECONDS = 10.0
MAX_MODELS = 1000


@dataclass(frozen=True, slots=True)
class Deadlines:
    """How long the gateway waits on the upstream, phase by phase, in seconds."""

    connect_seconds: float = 5.0  # TCP (and TLS) connection
    first_byte_seconds: float = 30.0  # request sent -> first bytes of the answer's body
    idle_seconds: float = 20.0  # the longest silence between two network reads of a running answer
    max_wait_seconds: float = 5.0  # total sleep between retries before the client is told instead
    max_retries: int = 2  # retries of a refused or unreachable request, before its stream starts


def _deadline_failure(message: str) -> TurnFailed:
    return TurnFailed(UpstreamFailure(pb.ERROR_CODE_DEADLINE_EXCEEDED, message, True))


class ChunkStream:
    """One open upstream stream; iterate `chunks()` once."""

    def __init__(
        self,
        response: openai.AsyncAPIResponse[Any],
        deadlines: Deadlines = Deadlines(),
        opened_at: float = 0.0,
    ) -> None:
        self._response = response
        self._deadlines = deadlines
        self._opened_at = opened_at  # loop time the request was sent: the first-byte deadline counts from it
        self.request_id: str = response.headers.get("x-request-id", "")
        self.saw_done = False

    async def chunks(self) -> AsyncIterator[object]:
        """Decoded JSON chunks in arrival order (the normalizer checks their shape).

        Raises TurnFailed if the connection breaks, a deadline passes (`deadline_exceeded`: no first byte
        within `first_byte_seconds`, or `idle_seconds` of silence) or a frame is not JSON
        (`upstream_malformed`).
        """
        decoder = SSEDecoder()
        loop = asyncio.get_running_loop()
        idle = self._deadlines.idle_seconds
        reads = aiter(self._response.iter_bytes())
        first = True
        try:
            while True:
                # Only the read is timed: a consumer slow to take a chunk is back-pressure, not silence.
                when = self._opened_at + self._deadlines.first_byte_seconds if first else loop.time() + idle
                try:
                    async with asyncio.timeout_at(when):
                        raw = await anext(reads, None)
                except TimeoutError:
                    if first:
                        seconds = self._deadlines.first_byte_seconds
                        raise _deadline_failure(f"the upstream sent no answer within {seconds:g} s") from None
                    raise _deadline_failure(f"the upstream sent nothing for {idle:g} s mid-answer") from None
                if raw is None:
                    break
                first = False
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
        except EventTooLarge as exc:
            failure = UpstreamFailure(
                pb.ERROR_CODE_UPSTREAM_MALFORMED, f"{exc}; the answer is incomplete", True
            )
            raise TurnFailed(failure) from exc
        except httpx2.TimeoutException as exc:
            raise _deadline_failure("the upstream stopped sending") from exc
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


class AnswerStream(Protocol):
    """One open answer, as Chat Completions chunks whatever the upstream's wire format (ChunkStream, or
    service.realtime_upstream.RealtimeStream)."""

    request_id: str  # the upstream's id for the request, for logs; may be empty
    saw_done: bool  # whether the upstream said the answer is complete ([DONE], response.done)

    def chunks(self) -> AsyncIterator[object]:
        """The chunks in arrival order; raises TurnFailed on a broken connection or a passed deadline."""
        ...


class Upstream(Protocol):
    """Something that opens a streamed chat completion for the given request parameters."""

    def open(self, params: Mapping[str, Any]) -> AbstractAsyncContextManager[AnswerStream]:
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

    def __init__(self, api_key: str, base_url: str | None, deadlines: Deadlines = Deadlines()) -> None:
        self._deadlines = deadlines
        # httpx's own read timeout is only a backstop: ChunkStream times the first byte and each gap.
        read = max(deadlines.first_byte_seconds, deadlines.idle_seconds) + 1.0
        timeout = httpx2.Timeout(read, connect=deadlines.connect_seconds)
        self._client = openai.AsyncOpenAI(
            api_key=api_key,
            base_url=base_url,
            timeout=timeout,
            max_retries=0,
            # The SDK's aiohttp transport: auth, base URL and typed errors stay the SDK's, but each read of
            # the streamed body costs far less than through httpcore, h11 and anyio (make bench).
            http_client=AioHttpClient(timeout=timeout),
        )

    @property
    def base_url(self) -> str:
        """Where requests go: the given base_url, else the SDK's (OPENAI_BASE_URL or OpenAI's own)."""
        return str(self._client.base_url)

    @asynccontextmanager
    async def open(self, params: Mapping[str, Any]) -> AsyncIterator[ChunkStream]:
        """Open the stream; closing the context closes the HTTP connection at once."""
        loop = asyncio.get_running_loop()
        slept = 0.0
        for attempt in range(self._deadlines.max_retries + 1):
            opened_at = loop.time()
            manager = self._client.chat.completions.with_streaming_response.create(**params)
            try:
                async with asyncio.timeout_at(opened_at + self._deadlines.first_byte_seconds):
                    response = await manager.__aenter__()
                break
            except TimeoutError:
                seconds = self._deadlines.first_byte_seconds
                raise _deadline_failure(f"the upstream sent no response within {seconds:g} s") from None
            except openai.APIError as exc:
                failure = failure_from_openai(exc)
                delay = retry_delay_seconds(failure, exc, attempt)
                last = attempt == self._deadlines.max_retries
                if delay is None or last or slept + delay > self._deadlines.max_wait_seconds:
                    raise TurnFailed(failure) from exc
                log.info("upstream refused (%s); retrying in %.2f s", failure.message, delay)
                await asyncio.sleep(delay)
                slept += delay
        try:
            yield ChunkStream(response, self._deadlines, opened_at)
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


def retry_delay_seconds(failure: UpstreamFailure, exc: openai.APIError, attempt: int) -> float | None:
    """How long to wait before retrying a refused request, or None when a retry is pointless.

    Timeouts are not retried (each would cost the whole deadline again); 4xx other than 408, 409 and a
    retryable 429 are the request's own fault. The upstream's retry delay wins; else 0.25, 0.5, 1 s...
    """
    if isinstance(exc, openai.APITimeoutError) or not failure.retryable:
        return None
    if (
        isinstance(exc, openai.APIStatusError)
        and exc.status_code not in (408, 409, 429)
        and exc.status_code < 500
    ):
        return None
    if failure.retry_after_ms:
        return failure.retry_after_ms / 1000
    return 0.25 * 2.0**attempt


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
