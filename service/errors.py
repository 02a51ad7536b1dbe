"""Typed errors that cross layers, and the one place where they become gRPC statuses or turn errors.

Business code raises these; only `status_for` (calls) and `TurnFailed.turn_error` (in-band turn errors)
decide what a client sees. Anything else that escapes is a bug: INTERNAL with a generic message, and the
traceback goes to the log.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc

from audiochat.v1 import audiochat_pb2 as pb
from service.rich_status import status_details

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


class UnknownConversation(AudioChatError):
    """A resume names a conversation the store does not hold (never started, or expired)."""

    code = grpc.StatusCode.NOT_FOUND


class NotOwner(AudioChatError):
    """A resume of a conversation started with another API key."""

    code = grpc.StatusCode.PERMISSION_DENIED


class TakenOver(AudioChatError):
    """A newer call resumed this conversation; this one ends."""

    code = grpc.StatusCode.ABORTED


class StoreUnavailable(AudioChatError):
    """The shared state store (Redis) did not answer in time or refused a write (full)."""

    code = grpc.StatusCode.UNAVAILABLE


# The turn error codes share the numbers of the gRPC status codes (see ErrorCode in the .proto).
_STATUS_BY_ERROR_CODE: dict[int, grpc.StatusCode] = {
    status.value[0]: status
    for status in grpc.StatusCode
    if status is not grpc.StatusCode.OK and status.value[0] in pb.ErrorCode.values()
}


@dataclass(slots=True)
class UpstreamFailure:
    """What went wrong upstream, before it is shaped for a client; `upstream` is the upstream's own error
    object when it sent one (never for timeouts and broken connections)."""

    code: pb.ErrorCode.ValueType
    message: str
    retryable: bool
    retry_after_ms: int = 0
    upstream_code: str = ""
    upstream: pb.UpstreamError | None = None

    def turn_error(self) -> pb.TurnError:
        """The in-band form, for TurnCompleted.error."""
        return pb.TurnError(
            code=self.code,
            message=self.message,
            retryable=self.retryable,
            retry_after_ms=self.retry_after_ms,
            upstream_code=self.upstream_code,
            upstream=self.upstream,
        )


# OpenAI puts the caller's organization id in some messages (rate limits): the gateway's, not the client's.
_ORGANIZATION_ID = re.compile(r"\borg-(?=[A-Za-z0-9]*[0-9])[A-Za-z0-9]{6,}\b")


def redact(message: str) -> str:
    """The upstream's message with organization ids (org-...) replaced by `org-[redacted]`."""
    return _ORGANIZATION_ID.sub("org-[redacted]", message)


def upstream_error(http_status: int, error: Mapping[str, Any]) -> tuple[str, pb.UpstreamError]:
    """The (redacted) message and the exact fields of an OpenAI-shaped error object `{"message", "type",
    "param", "code"}`; values that are not strings are left out rather than guessed."""
    result = pb.UpstreamError(http_status=http_status)
    kind = _text(error.get("type"))
    if kind is not None:
        result.type = kind
    code = error.get("code")
    code = str(code) if isinstance(code, int) and not isinstance(code, bool) else _text(code)
    if code is not None:
        result.code = code
    param = _text(error.get("param"))
    if param is not None:
        result.param = param
    return redact(_text(error.get("message")) or ""), result


def _text(value: object) -> str | None:
    """A string that protobuf can carry (valid Unicode), else None."""
    if not isinstance(value, str):
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "replace").decode("utf-8")
    return value


class TurnFailed(AudioChatError):
    """The upstream refused or failed a turn. In-band for Converse; a call status for StreamTurn."""

    def __init__(self, failure: UpstreamFailure) -> None:
        super().__init__(failure.message)
        self.failure = failure
        self.code = _STATUS_BY_ERROR_CODE.get(failure.code, grpc.StatusCode.UNAVAILABLE)


Metadata = tuple[tuple[str, str | bytes], ...]


def status_for(error: BaseException) -> tuple[grpc.StatusCode, str, Metadata]:
    """The status code, message and trailing metadata a failed call ends with: google.rpc.Status rich
    details (service.rich_status), plus the plain `retry-after-ms` and `audiochat-error-code` trailers."""
    if isinstance(error, TurnFailed):
        failure = error.failure
        metadata: Metadata = ()
        if failure.retry_after_ms:
            metadata = ((RETRY_AFTER_MS_KEY, str(failure.retry_after_ms)),)
        if failure.upstream_code:
            metadata += ((ERROR_CODE_KEY, failure.upstream_code),)
        rich = status_details(
            error.code, error.message, upstream=failure.upstream, retry_after_ms=failure.retry_after_ms
        )
        return error.code, error.message, metadata + rich
    if isinstance(error, Overloaded):
        rich = status_details(error.code, error.message, retry_after_ms=error.retry_after_ms)
        return error.code, error.message, ((RETRY_AFTER_MS_KEY, str(error.retry_after_ms)), *rich)
    if isinstance(error, InvalidInput):
        return error.code, error.message, status_details(error.code, error.message, field=error.field)
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
    message, upstream = upstream_error(200, error)
    upstream_code = (upstream.code if upstream.HasField("code") else "") or upstream.type
    code, retryable = pb.ERROR_CODE_UNAVAILABLE, True
    for kind in (upstream.code, upstream.type):
        if kind in _STREAM_ERROR_TYPES:
            code, retryable = _STREAM_ERROR_TYPES[kind]
            break
    return pb.TurnError(
        code=code,
        message=message or "the upstream failed mid-answer",
        retryable=retryable,
        upstream_code=upstream_code,
        upstream=upstream,
    )


async def abort(context: grpc.aio.ServicerContext[Any, Any], error: Exception) -> NoReturn:
    """End the call with the status `error` maps to; a bug is logged with its traceback first."""
    code, message, metadata = status_for(error)
    if code is grpc.StatusCode.INTERNAL and not isinstance(error, AudioChatError):
        log.error("unexpected error in a call", exc_info=error)
    # Marks a status as the core's own words, safe to pass on; gRPC's transport failures carry addresses.
    context.set_trailing_metadata((*metadata, (STATUS_ORIGIN_KEY, "core")))
    await context.abort(code, message)
