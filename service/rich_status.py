"""gRPC's standard rich error model (google.rpc.Status details, via grpcio-status) for our failures.

The core attaches, to every status it ends a call with: `ErrorInfo` (domain "upstream", reason the upstream's
error code or type, metadata `http_status`, `type` and `code` as the upstream sent them) when the upstream
refused; `BadRequest` naming the field (the upstream's `param`, or the path into our request such as
`config.extra_body.n`); `RetryInfo` with the delay. The edge reads them back so each edge protocol can say
exactly what the upstream said.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from audiochat.v1 import audiochat_pb2 as pb

UPSTREAM_DOMAIN = "upstream"


def status_details(
    code: grpc.StatusCode,
    message: str,
    *,
    upstream: pb.UpstreamError | None = None,
    field: str = "",
    retry_after_ms: int = 0,
) -> tuple[tuple[str, bytes], ...]:
    """The `grpc-status-details-bin` trailer for a call ending with `code` and `message`."""
    details: list[Any] = []
    if upstream is not None and upstream.http_status:
        metadata = {"http_status": str(upstream.http_status), "type": upstream.type}
        if upstream.HasField("code"):
            metadata["code"] = upstream.code
        reason = upstream.code or upstream.type or "upstream_error"
        details.append(error_details_pb2.ErrorInfo(reason=reason, domain=UPSTREAM_DOMAIN, metadata=metadata))
        if upstream.HasField("param"):
            field = upstream.param
    if field:
        violation = error_details_pb2.BadRequest.FieldViolation(field=field, description=message)
        details.append(error_details_pb2.BadRequest(field_violations=[violation]))
    if retry_after_ms:
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(retry_after_ms)
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    if not details:
        return ()
    status = status_pb2.Status(code=code.value[0], message=message, details=[_pack(d) for d in details])
    trailer = rpc_status.to_status(status).trailing_metadata
    return tuple((str(key), bytes(value)) for key, value in trailer)


def _pack(detail: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(detail)
    return packed


class Parsed:
    """What the rich details of a failed call say; empty when it carried none."""

    def __init__(self, details: Sequence[any_pb2.Any]) -> None:
        self.upstream: pb.UpstreamError | None = None
        self.field = ""
        self.retry_after_ms = 0
        for detail in details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                if info.domain == UPSTREAM_DOMAIN:
                    self.upstream = _upstream_error(info)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                if bad.field_violations:
                    self.field = bad.field_violations[0].field
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                self.retry_after_ms = max(0, retry.retry_delay.ToMilliseconds())
        if self.upstream is not None and self.field:
            self.upstream.param = self.field


def _upstream_error(info: error_details_pb2.ErrorInfo) -> pb.UpstreamError:
    metadata = dict(info.metadata)
    status = metadata.get("http_status", "")
    error = pb.UpstreamError(
        http_status=int(status) if status.isdigit() else 0, type=metadata.get("type", "")
    )
    if "code" in metadata:
        error.code = metadata["code"]
    return error


def parse(error: grpc.aio.AioRpcError) -> Parsed:
    """The rich details of a failed call; a status whose details do not match its code is ignored."""
    try:
        status = rpc_status.from_call(error)
    except ValueError:
        status = None
    return Parsed(status.details if status is not None else ())
