"""Bytes that are not the request message end the call INVALID_ARGUMENT (the client's fault), not gRPC's own
INTERNAL "Exception deserializing request!" (issue 10 item 7), and the server keeps serving."""

from __future__ import annotations

import grpc
import pytest

from audiochat.v1 import audiochat_pb2 as pb
from tests.conftest import RunningService
from tests.events import text_request

SERVICE = "/audiochat.v1.AudioChatService/"
# A truncated varint, a field with wire type 7 (none exists), a length running past the end.
GARBAGE = [b"\x08\xff\xff", b"\x0f", b"\x0a\x7fabc"]


def raw(data: bytes) -> bytes:
    return data


@pytest.mark.parametrize("garbage", GARBAGE)
async def test_stream_turn_garbage_is_invalid_argument(service: RunningService, garbage: bytes) -> None:
    call = service.channel.unary_stream(
        SERVICE + "StreamTurn", request_serializer=raw, response_deserializer=pb.TurnEvent.FromString
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in call(garbage):
            pass
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "StreamTurnRequest" in (caught.value.details() or "")
    async for _ in service.stub.StreamTurn(text_request("fixture/text_only")):
        pass  # still serving


@pytest.mark.parametrize("garbage", GARBAGE)
async def test_converse_garbage_after_config_is_invalid_argument(
    service: RunningService, garbage: bytes
) -> None:
    config = pb.ConverseRequest(config=pb.ConverseConfig(turn=pb.TurnConfig(model="fixture/text_only")))
    call = service.channel.stream_stream(
        SERVICE + "Converse", request_serializer=raw, response_deserializer=pb.ConverseResponse.FromString
    )(iter([config.SerializeToString(), garbage]))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in call:
            pass
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "ConverseRequest" in (caught.value.details() or "")
