"""The gateway's gRPC clients: `StreamTurn` and `Converse` over grpc's C core, a few channels shared by users.

Each is the plain, documented way an app would use that interface. The HTTP rows' client is `raw_http`;
the WebSocket one is in `edge_clients`.
"""

from __future__ import annotations

import math
from typing import Any

import grpc

from audiochat.v1 import audiochat_pb2 as pb
from audiochat.v1 import audiochat_pb2_grpc as pb_grpc
from benchmarks.load import Session, TurnError, TurnProbe

QUESTION = "Tell me something, out loud."
MODALITIES = [pb.MODALITY_TEXT, pb.MODALITY_AUDIO]
# Past about a hundred streams per HTTP/2 connection, one connection's flow control and framing become
# the client's bottleneck; an app with this many streams would open several channels too.
STREAMS_PER_CHANNEL = 100


class _Channels:
    """A few channels, each with its own connection, handed out round-robin."""

    def __init__(self, target: str, streams: int) -> None:
        count = max(1, math.ceil(streams / STREAMS_PER_CHANNEL))
        # A local subchannel pool per channel, or grpc would share one connection between them all.
        options = [("grpc.use_local_subchannel_pool", 1)]
        self._channels = [grpc.aio.insecure_channel(target, options=options) for _ in range(count)]
        self._stubs = [pb_grpc.AudioChatServiceStub(channel) for channel in self._channels]
        self._next = 0

    def stub(self) -> pb_grpc.AudioChatServiceAsyncStub:
        stub = self._stubs[self._next % len(self._stubs)]
        self._next += 1
        return stub

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()


def _ended(probe: TurnProbe, event: pb.TurnEvent) -> bool:
    """Report one event; True once the turn completed (as it should), TurnError if it ended badly."""
    if event.HasField("audio"):
        probe.audio(event.audio.data)
        return False
    probe.other()
    if not event.HasField("completed"):
        return False
    completed = event.completed
    if completed.reason != pb.FINISH_REASON_STOP:
        name = pb.FinishReason.Name(completed.reason).removeprefix("FINISH_REASON_").lower()
        code = pb.ErrorCode.Name(completed.error.code).removeprefix("ERROR_CODE_").lower()
        raise TurnError(f"{name}/{code}" if completed.HasField("error") else name)
    return True


class GrpcStreamTurn:
    """`StreamTurn`: one call per turn."""

    name = "grpc StreamTurn"

    def __init__(self, target: str, streams: int) -> None:
        self._channels = _Channels(target, streams)
        self._request = pb.StreamTurnRequest(
            config=pb.TurnConfig(modalities=MODALITIES), input=pb.UserMessage(text=QUESTION)
        )

    def session(self) -> Session:
        return _StreamTurnSession(self._channels.stub(), self._request)

    async def close(self) -> None:
        await self._channels.close()


class _StreamTurnSession:
    def __init__(self, stub: pb_grpc.AudioChatServiceAsyncStub, request: pb.StreamTurnRequest) -> None:
        self._stub = stub
        self._request = request

    async def turn(self, probe: TurnProbe) -> None:
        call = self._stub.StreamTurn(self._request)
        try:
            async for event in call:
                if _ended(probe, event):
                    return
        except grpc.aio.AioRpcError as exc:
            raise TurnError(exc.code().name) from exc
        finally:
            call.cancel()
        raise TurnError("no completed event")

    async def close(self) -> None:
        pass


class GrpcConverse:
    """`Converse`: one conversation per user, one text input per turn."""

    name = "grpc Converse"

    def __init__(self, target: str, streams: int) -> None:
        self._channels = _Channels(target, streams)

    def session(self) -> Session:
        return _ConverseSession(self._channels.stub())

    async def close(self) -> None:
        await self._channels.close()


class _ConverseSession:
    def __init__(self, stub: pb_grpc.AudioChatServiceAsyncStub) -> None:
        self._stub = stub
        self._call: Any = None

    async def _open(self) -> Any:
        call = self._stub.Converse()
        config = pb.ConverseConfig(turn=pb.TurnConfig(modalities=MODALITIES))
        await call.write(pb.ConverseRequest(config=config))
        first = await call.read()
        if not isinstance(first, pb.ConverseResponse) or not first.HasField("started"):
            raise TurnError("no ConversationStarted")
        return call

    async def turn(self, probe: TurnProbe) -> None:
        try:
            if self._call is None:
                self._call = await self._open()
            call = self._call
            await call.write(pb.ConverseRequest(text=pb.TextInput(text=QUESTION)))
            while (response := await call.read()) is not grpc.aio.EOF:
                if _ended(probe, response.event):
                    return
        except grpc.aio.AioRpcError as exc:
            self._call = None
            raise TurnError(exc.code().name) from exc
        self._call = None
        raise TurnError("conversation ended mid-turn")

    async def close(self) -> None:
        if self._call is not None:
            self._call.cancel()
            self._call = None
