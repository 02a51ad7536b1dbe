"""API keys on the gRPC port: an interceptor that refuses calls without `authorization: Bearer <key>`.

With AUDIOCHAT_API_KEYS (or AUDIOCHAT_API_KEYS_FILE) set, every call must carry one of the keys, as the
edge's HTTP and WebSocket routes require; without keys the port is open, as before. gRPC health is
exempt: Kubernetes' native gRPC probes cannot send metadata, and health tells nothing about the model.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health_pb2

from service.admission import let_client_finish_writing
from service.api_keys import AUTHORIZATION, ApiKeys, bearer_token

HEALTH_PREFIX = "/" + health_pb2.DESCRIPTOR.services_by_name["Health"].full_name + "/"
if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]  # generic only in the type stubs
REFUSAL = "missing or invalid API key: send the metadata 'authorization: Bearer <key>'"


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    """Lets a call through only with an accepted key (or to gRPC health)."""

    def __init__(self, keys: ApiKeys) -> None:
        self._keys = keys

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or method.startswith(HEALTH_PREFIX):
            return handler
        metadata = handler_call_details.invocation_metadata or ()
        token = next((bearer_token(str(value)) for key, value in metadata if key == AUTHORIZATION), None)
        if self._keys.accepts(token):
            return handler
        return _refusing(handler)


def _refusing(handler: Handler) -> Handler:
    """A handler of the same kind that ends the call UNAUTHENTICATED without running the method."""

    async def refuse(context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, REFUSAL)

    async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await refuse(context)

    async def streamed(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await let_client_finish_writing(requests)
        await refuse(context)

    kind = (handler.request_streaming, handler.response_streaming)
    make = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[kind]
    behaviour = streamed if handler.request_streaming else unary
    return make(
        behaviour,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
