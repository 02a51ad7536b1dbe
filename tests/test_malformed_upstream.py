"""Malformed upstream chunks end the turn in-band with `upstream_malformed`; oversize audio is split.

Pure tests over the normalizer, then the real stack: the fault upstream over HTTP, the SDK, gRPC, and
every edge transport. A turn that lost anything the model said never ends as a clean stop.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from typing import Any

import grpc
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from audiochat.v1 import audiochat_pb2 as pb
from service.normalizer import Normalizer
from service.sse_decoder import EventTooLarge, SSEDecoder
from tests.conftest import RunningService, StartService
from tests.edge_fixtures import RunningEdge
from tests.events import Collected, text_request
from tests.fault_upstream import FaultUpstream, pattern_pcm
from tests.upstream_server import fixture_events

AUDIO_ID = "audio_1"


def audio_chunk(**audio: Any) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {"audio": audio}, "finish_reason": None}]}


GOOD_START = [
    {"choices": [{"index": 0, "delta": {"role": "assistant", "refusal": None}}]},
    audio_chunk(transcript="Hello", id=AUDIO_ID),
    audio_chunk(data=base64.b64encode(b"\x01\x00\x02\x00").decode(), id=AUDIO_ID),
]

# Each is one kind of garbage; the issue named a few, the rest are the same kinds in other fields.
MALFORMED: dict[str, object] = {
    "bad base64 padding": audio_chunk(data="AAA"),
    "not base64": audio_chunk(data="!!!!"),
    "base64 with a space": audio_chunk(data="AA AA"),
    "data as a number": audio_chunk(data=12),
    "choices as an object": {"id": "x", "choices": {"0": 1}},
    "choices as a string": {"choices": "abc"},
    "choice as a list": {"choices": [[1]]},
    "delta as a list": {"choices": [{"index": 0, "delta": [1, 2]}]},
    "audio as a string": {"choices": [{"index": 0, "delta": {"audio": "AAAA"}}]},
    "expires_at as text": audio_chunk(expires_at="soon"),
    "expires_at as a float": audio_chunk(expires_at=1.5e9),
    "expires_at as a bool": audio_chunk(expires_at=True),
    "expires_at past int64": audio_chunk(expires_at=2**70),
    "audio id as a number": audio_chunk(id=7),
    "transcript as a list": audio_chunk(transcript=["a"]),
    "content as an object": {"choices": [{"index": 0, "delta": {"content": {"a": 1}}}]},
    "finish_reason as a list": {"choices": [{"index": 0, "delta": {}, "finish_reason": ["stop"]}]},
    "usage as a string": {"choices": [], "usage": "lots"},
    "a chunk that is an array": [1, 2],
    "a chunk that is a number": 3,
}


def fold(chunks: list[object]) -> tuple[list[pb.TurnEvent], Normalizer]:
    normalizer = Normalizer()
    events: list[pb.TurnEvent] = []
    for chunk in chunks:
        events += normalizer.feed(chunk)
        if normalizer.failed:
            break
    return events, normalizer


@pytest.mark.parametrize("name", list(MALFORMED))
def test_a_malformed_chunk_ends_the_turn_with_upstream_malformed(name: str) -> None:
    events, normalizer = fold([*GOOD_START, MALFORMED[name], audio_chunk(expires_at=1)])
    assert normalizer.failed
    outcome = normalizer.finish(saw_done=True)
    assert outcome.reason == pb.FINISH_REASON_ERROR
    assert outcome.error is not None
    assert outcome.error.code == pb.ERROR_CODE_UPSTREAM_MALFORMED and outcome.error.retryable
    # What came before the bad chunk was delivered as it was said.
    assert [e.WhichOneof("event") for e in events] == ["text", "audio"]
    assert outcome.transcript == "Hello" and outcome.audio_samples == 2


def test_audio_that_ends_on_half_a_sample_is_not_a_clean_stop() -> None:
    odd = audio_chunk(data=base64.b64encode(b"\x01\x00\x02").decode())
    _, normalizer = fold(
        [odd, audio_chunk(expires_at=1), {"choices": [{"delta": {}, "finish_reason": "stop"}]}]
    )
    outcome = normalizer.finish(saw_done=True)
    assert outcome.reason == pb.FINISH_REASON_ERROR
    assert outcome.error is not None and outcome.error.code == pb.ERROR_CODE_UPSTREAM_MALFORMED


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=12,
)
# Chunks shaped like real ones with any JSON in any field: the places the upstream could break.
FIELD = st.sampled_from(
    ["choices", "usage", "delta", "audio", "data", "id", "expires_at", "transcript", "content"]
)


def shaped(field: str, value: object) -> object:
    if field in ("choices", "usage"):
        return {field: value}
    if field == "delta":
        return {"choices": [{"index": 0, "delta": value}]}
    if field == "audio":
        return {"choices": [{"index": 0, "delta": {"audio": value}}]}
    if field == "content":
        return {"choices": [{"index": 0, "delta": {"content": value}}]}
    return audio_chunk(**{field: value})


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(FIELD, JSON) | JSON, max_size=6))
def test_any_json_chunk_is_folded_or_refused_never_raises(chunks: list[Any]) -> None:
    normalizer = Normalizer()
    for item in chunks:
        chunk = shaped(*item) if isinstance(item, tuple) else item
        for event in normalizer.feed(chunk):
            assert event.WhichOneof("event") in ("text", "audio", "usage")
        if normalizer.failed:
            break
    outcome = normalizer.finish(saw_done=True)
    pb.TurnCompleted(reason=outcome.reason, audio_id=outcome.audio_id, error=outcome.error)  # encodable
    if outcome.error is None:
        assert outcome.reason != pb.FINISH_REASON_ERROR


def test_a_piece_larger_than_the_delta_limit_is_split_into_whole_samples() -> None:
    pcm = pattern_pcm(10_001)  # odd: the last byte waits for the next piece
    normalizer = Normalizer(max_audio_delta_bytes=1001)
    events = normalizer.feed(audio_chunk(data=base64.b64encode(pcm).decode()))
    events += normalizer.feed(audio_chunk(data=base64.b64encode(b"\xff").decode()))
    deltas = [event.audio for event in events]
    assert all(len(d.data) <= 1000 and len(d.data) % 2 == 0 for d in deltas) and len(deltas) == 11
    assert [d.start_sample for d in deltas] == [sum(len(x.data) for x in deltas[:i]) // 2 for i in range(11)]
    assert b"".join(d.data for d in deltas) == pcm + b"\xff"


# ---- the real stack ----

PREFIX = b"".join(fixture_events("audio_no_finish_reason")[:12])  # role, transcript and some audio


def register(upstream: FaultUpstream, name: str, bad: object) -> str:
    raw = bad if isinstance(bad, bytes) else json.dumps(bad).encode()
    upstream.scripts[name] = (
        PREFIX + b"data: " + raw + b"\n\n" + b"".join(fixture_events("audio_no_finish_reason")[12:])
    )
    return f"script/{name}"


REAL_STACK_CASES: dict[str, object] = {
    "bad padding": MALFORMED["bad base64 padding"],
    "not base64": MALFORMED["not base64"],
    "choices as an object": MALFORMED["choices as an object"],
    "expires_at as text": MALFORMED["expires_at as text"],
    "cut JSON": b'{"choices":[{"index":0,"delta":{"audio":{"data":"AAAA',
}


@pytest.mark.parametrize("case", list(REAL_STACK_CASES))
async def test_stream_turn_ends_in_band_after_audio(
    case: str, service: RunningService, upstream: FaultUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    model = register(upstream, "bad", REAL_STACK_CASES[case])
    collected = Collected()
    async for event in service.stub.StreamTurn(text_request(model)):
        collected.add(event)
    done = collected.completed
    assert done is not None and done.reason == pb.FINISH_REASON_ERROR
    assert done.error.code == pb.ERROR_CODE_UPSTREAM_MALFORMED and done.error.retryable
    assert collected.audio, "the audio before the bad chunk reached the client"
    assert "never retrieved" not in caplog.text


async def test_converse_goes_on_after_a_malformed_turn(
    service: RunningService, upstream: FaultUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    call = service.stub.Converse()
    await call.write(
        pb.ConverseRequest(
            config=pb.ConverseConfig(
                turn=pb.TurnConfig(model=register(upstream, "bad", MALFORMED["not base64"]))
            )
        )
    )
    assert (await call.read()).HasField("started")
    for _ in range(2):  # the same conversation survives two broken turns in a row
        await call.write(pb.ConverseRequest(text=pb.TextInput(text="hi")))
        collected = Collected()
        while collected.completed is None:
            collected.add((await call.read()).event)
        assert collected.completed.error.code == pb.ERROR_CODE_UPSTREAM_MALFORMED
    await call.done_writing()
    assert await call.read() == grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK
    assert "never retrieved" not in caplog.text
    assert service.server.servicer.active_streams == 0


async def test_every_edge_says_upstream_malformed(start_edge: Any, upstream: FaultUpstream) -> None:
    edge: RunningEdge = await start_edge()
    model = register(upstream, "bad", MALFORMED["expires_at as text"])
    async with httpx.AsyncClient(base_url=edge.base_url, timeout=10) as client:
        sse = await client.post("/v1/turns", json={"model": model, "text": "hi"})
        last = [line for line in sse.text.splitlines() if line.startswith("data:")][-1]
        error = json.loads(last[5:])["error"]
        assert error["code"] == "upstream_malformed" and error["retryable"]
        compat = await client.post(
            "/v1/chat/completions",
            json={"model": model, "stream": True, "messages": [{"role": "user", "content": "hi"}]},
        )
        assert "[DONE]" not in compat.text and "upstream_malformed" in compat.text
        whole = await client.post(
            "/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": "hi"}]}
        )
        assert whole.status_code == 502 and "malformed" in whole.json()["error"]["message"]
    async with connect(edge.ws_url) as ws:
        await ws.send(json.dumps({"type": "config", "model": model}))
        await ws.recv()
        for _ in range(2):
            await ws.send(json.dumps({"type": "text", "text": "hi"}))
            while True:
                frame = await ws.recv()
                if isinstance(frame, str) and json.loads(frame)["type"] == "turn.completed":
                    break
            assert json.loads(frame)["error"]["code"] == "upstream_malformed"


async def test_an_audio_piece_over_the_message_limit_arrives_split(
    start_service: StartService, upstream: FaultUpstream
) -> None:
    # 64 KiB messages: a 300 kB upstream piece would be RESOURCE_EXHAUSTED whole.
    service = await start_service(max_message_bytes=64 * 1024)
    collected = Collected()
    async for event in service.stub.StreamTurn(text_request("big/300000")):
        collected.add(event)
    assert collected.completed is not None and collected.completed.reason == pb.FINISH_REASON_STOP
    assert bytes(collected.audio) == pattern_pcm(300_000)
    sizes = [len(e.audio.data) for e in collected.events if e.HasField("audio")]
    assert len(sizes) > 1 and max(sizes) <= 32 * 1024


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    bad=st.sampled_from(list(MALFORMED.values()))
    | JSON.map(lambda value: {"choices": [{"delta": {"audio": value}}]})
)
async def test_hypothesis_garbage_through_grpc(
    service: RunningService, upstream: FaultUpstream, bad: object
) -> None:
    model = register(upstream, "fuzz", bad)
    collected = Collected()
    try:
        async for event in service.stub.StreamTurn(text_request(model)):
            collected.add(event)
    except grpc.aio.AioRpcError as exc:  # pragma: no cover - the assertion says what went wrong
        raise AssertionError(
            f"the call failed instead of ending in-band: {exc.code()} {exc.details()}"
        ) from exc
    done = collected.completed
    assert done is not None
    assert done.reason == pb.FINISH_REASON_ERROR or len(collected.audio) == 2 * done.audio_samples
    if done.reason == pb.FINISH_REASON_ERROR:
        assert done.error.code == pb.ERROR_CODE_UPSTREAM_MALFORMED


async def test_a_malformed_turn_does_not_hold_up_the_drain(
    start_service: StartService, upstream: FaultUpstream
) -> None:
    # drain() lets running answers end, then ends each conversation with UNAVAILABLE "shutting down"; a
    # turn that never completed kept it waiting until the grace cut every call instead.
    service = await start_service(drain_seconds=60.0)
    model = register(upstream, "bad", MALFORMED["choices as an object"])
    call = service.stub.Converse()
    await call.write(pb.ConverseRequest(config=pb.ConverseConfig(turn=pb.TurnConfig(model=model))))
    await call.read()
    await call.write(pb.ConverseRequest(text=pb.TextInput(text="hi")))
    collected = Collected()
    while collected.completed is None:
        collected.add((await call.read()).event)
    stopping = asyncio.create_task(service.server.stop())
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await call.read()
    assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "shutting down" in (ended.value.details() or "")
    async with asyncio.timeout(30):  # far below the 60 s grace
        await stopping


async def read_until_closed(ws: ClientConnection) -> None:
    while True:
        await ws.recv()  # the `error` frame that says why comes before the close


async def test_a_malformed_turn_does_not_hold_up_the_edge_drain(
    start_edge: Any, upstream: FaultUpstream
) -> None:
    # The WebSocket edge drains once the running answer has ended: it must see that answer's turn.completed.
    edge: RunningEdge = await start_edge(drain_seconds=60.0)
    model = register(upstream, "bad", MALFORMED["expires_at as text"])
    async with connect(edge.ws_url) as ws:
        await ws.send(json.dumps({"type": "config", "model": model}))
        await ws.recv()
        await ws.send(json.dumps({"type": "text", "text": "hi"}))
        while not (isinstance(frame := await ws.recv(), str) and '"turn.completed"' in frame):
            pass
        stopping = asyncio.create_task(edge.server.stop())
        with pytest.raises(ConnectionClosed) as closed:
            await read_until_closed(ws)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
    async with asyncio.timeout(30):  # far below the 60 s grace
        await stopping


@pytest.mark.parametrize("pieces", [[b"data: " + b"A" * 60] * 2, [b"data: " + b"A" * 40 + b"\n"] * 3])
def test_an_endless_upstream_event_is_refused_not_buffered(pieces: list[bytes]) -> None:
    # One line that never ends, or data lines that never reach the blank line that ends their event.
    decoder = SSEDecoder(max_event_bytes=100)
    for piece in pieces[:-1]:
        assert decoder.feed(piece) == []
    with pytest.raises(EventTooLarge):
        decoder.feed(pieces[-1])
    assert SSEDecoder(max_event_bytes=100).feed(b"data: " + b"A" * 90 + b"\n\n") == [b"A" * 90]
