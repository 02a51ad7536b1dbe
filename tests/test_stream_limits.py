"""The core's limits: running turns (AUDIOCHAT_MAX_STREAMS) and open conversations, counted apart.

At a limit every transport says "overloaded, retry later" in its own protocol (RESOURCE_EXHAUSTED with
`retry-after-ms`, WebSocket 1013 with `retry_after_ms`), never INTERNAL or 1011, however fast the client
writes after its config.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable
from typing import Any

import grpc
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from audiochat.v1 import audiochat_pb2 as pb
from service.errors import RETRY_AFTER_MS_KEY
from tests.conftest import RunningService, StartService
from tests.edge_fixtures import StartEdge
from tests.events import Collected, text_request

PCM16_24K = pb.AudioFormat(encoding=pb.AUDIO_ENCODING_PCM16, sample_rate_hz=24_000)
ATTEMPTS = 20


def config(model: str = "fixture/text_only") -> pb.ConverseRequest:
    return pb.ConverseRequest(config=pb.ConverseConfig(turn=pb.TurnConfig(model=model)))


async def wait_until(condition: Callable[[], bool]) -> None:
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met within 2 s")


async def read_turn(call: Any) -> pb.TurnCompleted:
    answer = Collected()
    while answer.completed is None:
        answer.add((await call.read()).event)
    return answer.completed


async def read_until_closed(ws: ClientConnection) -> tuple[list[dict[str, Any]], int | None]:
    """The JSON frames a WebSocket got before it was closed, and the close code."""
    frames = []
    try:
        while True:
            frame = await ws.recv()
            if isinstance(frame, str):
                frames.append(json.loads(frame))
    except ConnectionClosed as closed:
        return frames, closed.rcvd.code if closed.rcvd else None


async def open_conversation(service: RunningService) -> Any:
    call = service.stub.Converse()
    await call.write(config())
    assert (await call.read()).HasField("started")
    return call


async def test_idle_conversations_do_not_hold_turn_slots(start_service: StartService) -> None:
    service = await start_service(max_streams=1)
    idle = [await open_conversation(service) for _ in range(3)]
    turn = Collected()
    async for event in service.stub.StreamTurn(text_request("fixture/text_only")):
        turn.add(event)
    turn.assert_matches("text_only")
    # And each idle conversation can still take its turn, one after the other.
    for call in idle:
        await call.write(pb.ConverseRequest(text=pb.TextInput(text="Hi")))
        assert (await read_turn(call)).reason == pb.FINISH_REASON_STOP
        call.cancel()


async def test_a_conversation_turn_over_the_limit_fails_in_band_and_the_conversation_goes_on(
    start_service: StartService,
) -> None:
    service = await start_service(max_streams=1)
    busy = service.stub.StreamTurn(text_request("slow/audio_no_finish_reason"))
    assert (await busy.read()).HasField("started")
    call = await open_conversation(service)
    await call.write(pb.ConverseRequest(text=pb.TextInput(text="Hi")))
    refused = (await call.read()).event.completed
    assert refused.reason == pb.FINISH_REASON_ERROR
    assert refused.error.code == pb.ERROR_CODE_RESOURCE_EXHAUSTED
    assert refused.error.retryable and refused.error.retry_after_ms > 0
    busy.cancel()
    await wait_until(lambda: service.server.servicer.running_turns == 0)
    await call.write(pb.ConverseRequest(text=pb.TextInput(text="Hi again")))
    assert (await read_turn(call)).reason == pb.FINISH_REASON_STOP
    call.cancel()


async def test_conversations_over_their_limit_are_resource_exhausted_over_grpc(
    start_service: StartService,
) -> None:
    service = await start_service(max_conversations=1)
    held = await open_conversation(service)
    outcomes: Counter[str] = Counter()
    for _ in range(ATTEMPTS):

        async def eager() -> object:
            # A client that does not wait for ConversationStarted before it sends audio.
            yield config()
            yield pb.ConverseRequest(text=pb.TextInput(text="Hi"))
            for _ in range(20):
                yield pb.ConverseRequest(audio=pb.AudioChunk(data=bytes(3200), format=PCM16_24K))

        call = service.stub.Converse(eager())
        try:
            async for _ in call:
                pass
            outcomes["served"] += 1
        except grpc.aio.AioRpcError as exc:
            metadata = dict(exc.trailing_metadata() or ())
            outcomes[f"{exc.code().name} retry={RETRY_AFTER_MS_KEY in metadata}"] += 1
    assert outcomes == {"RESOURCE_EXHAUSTED retry=True": ATTEMPTS}
    held.cancel()


async def test_websockets_over_the_limit_close_1013_with_a_retry_delay(
    start_service: StartService, start_edge: StartEdge
) -> None:
    edge = await start_edge(await start_service(max_conversations=1))
    async with connect(edge.ws_url, subprotocols=["audiochat.v1"]) as held:  # type: ignore[list-item]
        await held.send(json.dumps({"type": "config", "model": "fixture/text_only"}))
        assert json.loads(await held.recv())["type"] == "conversation.started"
        outcomes: Counter[str] = Counter()
        for _ in range(ATTEMPTS):
            async with connect(edge.ws_url, subprotocols=["audiochat.v1"]) as ws:  # type: ignore[list-item]
                # Everything at once, as a page that does not wait for conversation.started would.
                await ws.send(json.dumps({"type": "config", "model": "fixture/text_only"}))
                await ws.send(json.dumps({"type": "text", "text": "Hi"}))
                for _ in range(20):
                    await ws.send(bytes(3200))
                frames, code = await read_until_closed(ws)
                retry = [frame.get("retry_after_ms", 0) for frame in frames if frame["type"] == "error"]
                outcomes[f"{code} retry={bool(retry and retry[0] > 0)}"] += 1
    assert outcomes == {"1013 retry=True": ATTEMPTS}
