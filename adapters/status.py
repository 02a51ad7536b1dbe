"""The one place where a failed gRPC call becomes an HTTP status, an OpenAI error or a WebSocket close code.

The table is the design doc's; every route asks here, so a client sees the same answer whichever edge it uses.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import Any

import grpc

from audiochat.v1 import audiochat_pb2 as pb
from service import rich_status
from service.errors import ERROR_CODE_KEY, RETRY_AFTER_MS_KEY, STATUS_ORIGIN_KEY

log = logging.getLogger(__name__)

# Words of the core's messages that tell two failures with one status apart.
_SIZE_MARKER = "over the limit"
_SHUTDOWN_MARKER = "shutting down"


@dataclass(frozen=True, slots=True)
class EdgeError:
    """A failure as every edge protocol shows it."""

    http_status: int
    code: str  # short snake_case name, the `code` of the JSON error body
    message: str
    close_code: int  # WebSocket close code
    retry_after_ms: int = 0
    param: str | None = None  # the request field at fault (the upstream's `param`, or ours)
    upstream: pb.UpstreamError | None = None  # the upstream's own error, when it sent one

    def fields(self) -> dict[str, Any]:
        """`code`, `message`, and `param` and `upstream` when known: the SSE and WebSocket error objects."""
        result: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.param is not None:
            result["param"] = self.param
        if self.upstream is not None:
            result["upstream"] = upstream_json(self.upstream)
        return result

    def body(self) -> dict[str, dict[str, Any]]:
        """The JSON error body of the SSE routes: {"error": {"code", "message", "param"?, "upstream"?}}."""
        return {"error": self.fields()}

    def headers(self) -> dict[str, str]:
        """Retry-After (whole seconds, rounded up) and retry-after-ms when the core gave a delay."""
        if not self.retry_after_ms:
            return {}
        return {
            "Retry-After": str(max(1, math.ceil(self.retry_after_ms / 1000))),
            "retry-after-ms": str(self.retry_after_ms),
        }

    def openai_body(self) -> dict[str, dict[str, str | None]]:
        """OpenAI's error shape, so the SDKs raise their usual exception classes; the upstream's own
        type, code and param when the upstream refused."""
        if self.upstream is not None:
            upstream = self.upstream
            return {
                "error": {
                    "message": self.message,
                    "type": upstream.type,
                    "param": upstream.param if upstream.HasField("param") else None,
                    "code": upstream.code if upstream.HasField("code") else None,
                }
            }
        kind = _OPENAI_TYPES.get(
            self.http_status, "server_error" if self.http_status >= 500 else "invalid_request_error"
        )
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


def upstream_json(error: pb.UpstreamError) -> dict[str, Any]:
    """The upstream's error as it sent it: {"http_status", "type", "code", "param"} (null if absent)."""
    return {
        "http_status": error.http_status,
        "type": error.type,
        "code": error.code if error.HasField("code") else None,
        "param": error.param if error.HasField("param") else None,
    }


_OPENAI_TYPES = {401: "authentication_error", 429: "rate_limit_exceeded", 409: "invalid_request_error"}


def edge_error(
    code: str, message: str, http_status: int, close_code: int, retry_after_ms: int = 0
) -> EdgeError:
    """An error the edge raises itself (bad JSON, too large, no key) before any call."""
    return EdgeError(http_status, code, message, close_code, retry_after_ms)


def bad_request(message: str) -> EdgeError:
    """Malformed input: 400, close 1007."""
    return EdgeError(400, "invalid_argument", message, 1007)


def too_large(message: str) -> EdgeError:
    """Input over a size limit: 413, close 1009."""
    return EdgeError(413, "too_large", message, 1009)


def unauthenticated(message: str = "missing or invalid API key") -> EdgeError:
    """No or bad key: 401, close 1008."""
    return EdgeError(401, "unauthenticated", message, 1008)


def shutting_down() -> EdgeError:
    """The edge is draining: 503, close 1012 (service restart: reconnect elsewhere)."""
    return EdgeError(503, "unavailable", "the server is shutting down; retry on another instance", 1012, 1000)


def store_unavailable(message: str, retry_after_ms: int) -> EdgeError:
    """The shared store (Redis) cannot be used and AUDIOCHAT_REDIS_UNAVAILABLE is fail: 503, close 1013."""
    return EdgeError(503, "unavailable", message, 1013, retry_after_ms)


def unreachable_reason(error: BaseException) -> str:
    """Why the core could not be reached, in words safe to show anyone: no address, no class name.

    gRPC's own details name the core's address ("ipv4:10.0.3.7:50051: Connection refused"); they go to
    the log, never into a response.
    """
    if isinstance(error, grpc.aio.AioRpcError):
        return _UNREACHABLE.get(error.code(), error.code().name.lower())
    if isinstance(error, TimeoutError):
        return "no answer in time"
    return "unexpected failure"


_TRANSPORT_FAILURES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
_UNREACHABLE = {
    grpc.StatusCode.UNAVAILABLE: "connection refused or lost",
    grpc.StatusCode.DEADLINE_EXCEEDED: "no answer in time",
    grpc.StatusCode.UNAUTHENTICATED: "the core refused this edge's credentials",
}


def _metadata(error: grpc.aio.AioRpcError, key: str) -> str:
    for name, value in error.trailing_metadata() or ():
        if name == key:
            return str(value)
    return ""


def from_rpc_error(error: grpc.aio.AioRpcError) -> EdgeError:
    """Map a failed call per the design table, with the rich details (field, upstream error, retry delay)."""
    rich = rich_status.parse(error)
    retry_ms_text = _metadata(error, RETRY_AFTER_MS_KEY)
    retry_ms = rich.retry_after_ms or (int(retry_ms_text) if retry_ms_text.isdigit() else 0)
    upstream_failed = bool(_metadata(error, ERROR_CODE_KEY)) or rich.upstream is not None
    message = error.details() or error.code().name.lower()
    if not _metadata(error, STATUS_ORIGIN_KEY) and error.code() in _TRANSPORT_FAILURES:
        # Not the core's words but gRPC's, about reaching it: they name its address. Logged, not shown.
        log.warning("core call failed: %s", message, extra={"code": error.code().name})
        message = f"the service is unreachable ({unreachable_reason(error)}); retry later"
    return _with_upstream(
        _map(error.code(), message, retry_ms, upstream_failed), rich.upstream, rich.field or None
    )


def from_turn_error(error: pb.TurnError) -> EdgeError:
    """A turn that failed in-band, for an answer not yet begun (the non-streaming compat route)."""
    if error.code == pb.ERROR_CODE_UPSTREAM_MALFORMED:
        # Not a gRPC status: the upstream answered, but not in its format (a bad gateway, like HTTP 502).
        return EdgeError(502, "upstream_malformed", error.message, 1011, error.retry_after_ms)
    status = _STATUS_BY_VALUE.get(error.code, grpc.StatusCode.UNAVAILABLE)
    mapped = _map(status, error.message or "the upstream failed", error.retry_after_ms, upstream_failed=True)
    upstream = error.upstream if error.HasField("upstream") else None
    return _with_upstream(mapped, upstream, None)


def _with_upstream(error: EdgeError, upstream: pb.UpstreamError | None, field: str | None) -> EdgeError:
    """An upstream 4xx answers with the upstream's own status (400, 404, 422...), as the upstream would."""
    if upstream is not None:
        field = upstream.param if upstream.HasField("param") else field
        if 400 <= upstream.http_status < 500 and upstream.http_status != 401:
            error = replace(error, http_status=upstream.http_status)
        return replace(error, param=field, upstream=upstream)
    return replace(error, param=field) if field else error


_STATUS_BY_VALUE = {status.value[0]: status for status in grpc.StatusCode}


def _map(code: grpc.StatusCode, message: str, retry_ms: int, upstream_failed: bool) -> EdgeError:
    name = code.name.lower()
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        if _SIZE_MARKER in message:
            return EdgeError(413, "too_large", message, 1009)
        return EdgeError(400, name, message, 1007)
    if code is grpc.StatusCode.FAILED_PRECONDITION:
        return EdgeError(409, name, message, 1008)
    if code is grpc.StatusCode.NOT_FOUND:  # a resume of an unknown or expired conversation
        return EdgeError(404, name, message, 1008)
    if code is grpc.StatusCode.ABORTED:  # a newer connection resumed the conversation
        return EdgeError(409, name, message, 1008)
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return EdgeError(401 if code is grpc.StatusCode.UNAUTHENTICATED else 403, name, message, 1008)
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        return EdgeError(429, name, message, 1013, retry_ms or 1000)
    if code is grpc.StatusCode.UNAVAILABLE:
        if upstream_failed:
            return EdgeError(502, name, message, 1011, retry_ms)  # the upstream failed, not us
        if _SHUTDOWN_MARKER in message:
            return EdgeError(503, name, message, 1012, retry_ms or 1000)
        return EdgeError(503, name, message, 1013, retry_ms or 1000)  # the core is unreachable
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return EdgeError(504, name, message, 1011)
    if code is grpc.StatusCode.CANCELLED:
        return EdgeError(499, name, message, 1001)
    return EdgeError(500, "internal", "internal error; the gateway logged the details", 1011)
