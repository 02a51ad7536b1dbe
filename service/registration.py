"""Registers the servicer as the generated `add_AudioChatServiceServicer_to_server` does, except for bytes
that are not the request message: gRPC would end such a call INTERNAL ("Exception deserializing request!"),
blaming the server for the client's bytes. Here they reach the handler as a `Malformed` marker, and the
servicer ends the call INVALID_ARGUMENT like any other bad input.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.message import DecodeError, Message

from audiochat.v1 import audiochat_pb2 as pb
from service.errors import InvalidInput

SERVICE = pb.DESCRIPTOR.services_by_name["AudioChatService"]


class Malformed:
    """Stands for a request message whose bytes did not decode."""

    def __init__(self, type_name: str, reason: str) -> None:
        self.message = f"the request is not a valid {type_name} protobuf message: {reason}"


def _tolerant(message_class: type[Message]) -> Callable[[bytes], Message | Malformed]:
    name = message_class.DESCRIPTOR.full_name

    def deserialize(data: bytes) -> Message | Malformed:
        try:
            return message_class.FromString(data)
        except (DecodeError, RuntimeError, ValueError) as exc:
            return Malformed(name, str(exc) or type(exc).__name__)

    return deserialize


def add_servicer(servicer: Any, server: grpc.aio.Server) -> None:
    """Register every method of AudioChatService (read from the descriptor) on `server`."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in SERVICE.methods:
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        kind = {
            (False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler,
        }[(method.client_streaming, method.server_streaming)]
        handlers[method.name] = kind(
            getattr(servicer, method.name),
            request_deserializer=_tolerant(request_class),
            response_serializer=response_class.SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),))
    server.add_registered_method_handlers(SERVICE.full_name, handlers)


def reject_malformed(request: object) -> None:
    """InvalidInput for a request whose bytes did not decode; the servicer calls it first thing."""
    if isinstance(request, Malformed):
        raise InvalidInput(request.message)
