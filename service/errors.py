"""Typed errors that cross layers, and the one place where they become gRPC statuses or turn errors.

Business code raises these; only `status_for` (calls) and `TurnFailed.turn_error` (in-band turn errors)
decide what a client sees. Anything else that escapes is a bug: INTERNAL with a generic message, and the
traceback goes to the log.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc

from audiochat.v1 import audiochat_pb2 as pb

log = logging.getLogger(__name__)

# Metadata keys that carry the retry delay of a RESOURCE_EXHAUSTED or UNAVAILABLE status.
RETRY_AFTER_MS_KEY = "retry-after-ms"
ERROR_CODE_KEY = "audiochat-error-code"
STATUS_ORIGIN_KEY = "audiochat-status-origin"  # set on every status the core ends a call with


class AudioChatError(Exception):
    """Base of every error a client may see; `code` is the gRPC status it maps to."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(AudioChatError):
    """Malformed input, an unknown format, or input over a size limit; `field` names it when known
    (as a path into the request, for example `config.extra_body.n`)."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


class WrongState(AudioChatError):
    """A message that is valid but not now (audio before config)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Overloaded(AudioChatError):
    """One of our own limits (concurrent streams) is reached."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, retry_after_ms: int = 1000) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


class ShuttingDown(AudioChatError):
    """The server is draining and takes no new work."""

    code = grpc.StatusCode.UNAVAILABLE


# The turn error codes share the numbers of the gRPC status codes (see ErrorCode in the .proto).
_STATUS_BY_ERROR_CODE: dict[int, grpc.StatusCode] = {
    status.value[0]: status
    for status in grpc.StatusCode
    if status is not grpc.StatusCode.OK and status.value[0] in pb.ErrorCode.values()
}


@dataclass(slots=True)
class UpstreamFailure:
    """What went wrong upstream, before it is shaped for a client."""

    code: pb.ErrorCode.ValueType
    message: str
    retryable: bool
    retry_after_ms: int = 0
    upstream_code: str = ""

    def turn_error(self) -> pb.TurnError:
        """The in-band form, for TurnCompleted.error."""
        return pb.TurnError(
            code=self.code,
            message=self.message,
            retryable=self.retryable,
            retry_after_ms=self.retry_after_ms,
            upstream_code=self.upstream_code,
        )


class TurnFailed(AudioChatError):
    """The upstream refused or failed a turn. In-band for Converse; a call status for StreamTurn."""

    def __init__(self, failure: UpstreamFailure) -> None:
        super().__init__(failure.message)
        self.failure = failure
        self.code = _STATUS_BY_ERROR_CODE.get(failure.code, grpc.StatusCode.UNAVAILABLE)


def status_for(error: BaseException) -> tuple[grpc.StatusCode, str, tuple[tuple[str, str], ...]]:
    """The status code, message and trailing metadata a failed call ends with."""
    if isinstance(error, TurnFailed):
        metadata: tuple[tuple[str, str], ...] = ()
        if error.failure.retry_after_ms:
            metadata = ((RETRY_AFTER_MS_KEY, str(error.failure.retry_after_ms)),)
        if error.failure.upstream_code:
            metadata += ((ERROR_CODE_KEY, error.failure.upstream_code),)
        return error.code, error.message, metadata
    if isinstance(error, Overloaded):
        return error.code, error.message, ((RETRY_AFTER_MS_KEY, str(error.retry_after_ms)),)
    if isinstance(error, AudioChatError):
        return error.code, error.message, ()
    return grpc.StatusCode.INTERNAL, "internal error; the gateway logged the details", ()


# Mid-stream error frames carry only a `type` (and sometimes a `code`); map the known ones.
_STREAM_ERROR_TYPES: dict[str, tuple[pb.ErrorCode.ValueType, bool]] = {
    "server_error": (pb.ERROR_CODE_UNAVAILABLE, True),
    "rate_limit_exceeded": (pb.ERROR_CODE_RESOURCE_EXHAUSTED, True),
    "tokens": (pb.ERROR_CODE_RESOURCE_EXHAUSTED, True),
    "requests": (pb.ERROR_CODE_RESOURCE_EXHAUSTED, True),
    "insufficient_quota": (pb.ERROR_CODE_RESOURCE_EXHAUSTED, False),
    "invalid_request_error": (pb.ERROR_CODE_INVALID_ARGUMENT, False),
}


def turn_error_from_stream_frame(error: Mapping[str, Any]) -> pb.TurnError:
    """The turn error for an `{"error": ...}` frame that arrived inside a 200 stream."""
    upstream_code = str(error.get("code") or error.get("type") or "")
    code, retryable = pb.ERROR_CODE_UNAVAILABLE, True
    for kind in (error.get("code"), error.get("type")):
        if kind in _STREAM_ERROR_TYPES:
            code, retryable = _STREAM_ERROR_TYPES[kind]
            break
    message = error.get("message")
    return pb.TurnError(
        code=code,
        message=message if isinstance(message, str) and message else "the upstream failed mid-answer",
        retryable=retryable,
        upstream_code=upstream_code,
    )


async def abort(context: grpc.aio.ServicerContext[Any, Any], error: Exception) -> NoReturn:
    """End the call with the status `error` maps to; a bug is logged with its traceback first."""
    code, message, metadata = status_for(error)
    if code is grpc.StatusCode.INTERNAL and not isinstance(error, AudioChatError):
        log.error("unexpected error in a call", exc_info=error)
    # Marks a status as the core's own words, safe to pass on; gRPC's transport failures carry addresses.
    context.set_trailing_metadata((*metadata, (STATUS_ORIGIN_KEY, "core")))
    await context.abort(code, message)
