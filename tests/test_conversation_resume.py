"""Converse resume over real gRPC, on both stores (this process's memory, a real redis-server): history and
config kept, the rest of an answer delivered live or reported cut, refusals by id, key and takeover."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY

from audiochat.v1 import audiochat_pb2 as pb
from service.conversation_resume import CUT_CALL_ENDED, CUT_GRACE
from tests.conftest import RunningService, StartService
from tests.events import Collected, expected
from tests.fault_upstream import FaultUpstream
from tests.redis_server import RedisServer, redis_server  # noqa: F401 (fixture)
from tests.upstream_server import FixtureUpstream

PAUSE = "pause/0.5/audio_no_finish_reason"  # its first event, half a second of nothing, then the rest
KEY = (("authorization", "Bearer key-a"),)


@pytest.fixture(params=["memory", "redis"])
async def core(request: pytest.FixtureRequest, start_service: StartService) -> RunningService:
    """A service keeping conversations in its memory, or in a real redis-server."""
    if request.param == "memory":
        return await start_service()
    server: RedisServer = request.getfixturevalue("redis_server")
    return await start_service(redis_url=server.url)


def text(value: str) -> pb.ConverseRequest:
    return pb.ConverseRequest(text=pb.TextInput(text=value))


def resume(conversation_id: str, turn_id: str = "", sequence: int = 0) -> pb.ConverseRequest:
    return pb.ConverseRequest(
        resume=pb.ConverseResume(conversation_id=conversation_id, turn_id=turn_id, sequence=sequence)
    )


async def start(
    core: RunningService, model: str, metadata: Any = KEY, grace_ms: int | None = 10_000, **turn: Any
) -> tuple[Any, str]:
    """A conversation whose client asks its answers to outlive a dropped call by `grace_ms` (None: unset)."""
    call = core.stub.Converse(metadata=metadata)
    config = pb.ConverseConfig(turn=pb.TurnConfig(model=model, **turn), resume_grace_ms=grace_ms)
    await call.write(pb.ConverseRequest(config=config))
    started = (await call.read()).started
    assert not started.resumed and started.resumable
    return call, started.conversation_id


async def resumed(core: RunningService, request: pb.ConverseRequest, metadata: Any = KEY) -> Any:
    call = core.stub.Converse(metadata=metadata)
    await call.write(request)
    started = (await call.read()).started
    assert started.resumed and started.resumable
    assert started.conversation_id == request.resume.conversation_id
    return call


async def read_events(call: Any, collected: Collected | None = None, count: int = 0) -> Collected:
    """Events until the turn's end (or `count` of them); checks there is no gap."""
    collected = collected or Collected()
    while collected.completed is None and not (count and len(collected.events) >= count):
        response = await call.read()
        assert response is not grpc.aio.EOF, "stream ended mid-turn"
        collected.add(response.event)
    return collected


async def test_history_and_config_survive_a_resume(core: RunningService, upstream: FixtureUpstream) -> None:
    call, conversation_id = await start(core, "fresh/audio_no_finish_reason", instructions="Be brief.")
    await call.write(text("Is a golden retriever a good family dog?"))
    await read_events(call)
    call.cancel()
    again = await resumed(core, resume(conversation_id))
    await again.write(text("And for a small flat?"))
    await read_events(again)
    second = upstream.requests[-1]
    assert second["model"] == "fresh/audio_no_finish_reason"  # the config came back with it
    assert second["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Is a golden retriever a good family dog?"},
        {"role": "assistant", "audio": {"id": expected("audio_no_finish_reason")["audio_id"]}},
        {"role": "user", "content": "And for a small flat?"},
    ]
    again.cancel()


async def test_the_rest_of_an_answer_follows_a_resume(
    core: RunningService, upstream: FixtureUpstream
) -> None:
    call, conversation_id = await start(core, PAUSE)
    await call.write(text("Is a golden retriever a good family dog?"))
    before = await read_events(call, count=1)
    call.cancel()  # the connection drops mid-answer; the turn goes on for a resume
    last = before.events[-1]
    again = await resumed(core, resume(conversation_id, last.turn_id, last.sequence))
    rest = await read_events(again, before)  # the events seen before, then the rest: one gap-free turn
    rest.assert_matches("audio_no_finish_reason")  # byte for byte, as if never dropped
    assert len(upstream.requests) == 1  # the answer went on; it was not asked again
    await again.write(text("Thanks."))
    await read_events(again)
    assert upstream.requests[-1]["messages"][1]["role"] == "assistant"  # the resumed answer is history
    again.cancel()


async def test_a_resume_after_the_answer_ended_gets_its_tail(core: RunningService) -> None:
    call, conversation_id = await start(core, "fixture/audio_no_finish_reason")
    await call.write(text("hello"))
    whole = await read_events(call)
    call.cancel()
    middle = whole.events[len(whole.events) // 2]
    again = await resumed(core, resume(conversation_id, middle.turn_id, middle.sequence))
    tail = [(await again.read()).event for _ in range(len(whole.events) - middle.sequence)]
    assert tail == whole.events[middle.sequence :]
    again.cancel()


async def test_a_turn_nobody_resumes_is_cut_after_the_grace(
    start_service: StartService, upstream: FixtureUpstream
) -> None:
    core = await start_service(conversation_orphan_seconds=0.2)
    call, conversation_id = await start(core, "stall/30/audio_no_finish_reason")
    await call.write(text("hello"))
    seen = await read_events(call, count=1)
    call.cancel()
    async with asyncio.timeout(5):
        await upstream.client_closed.wait()
    again = await resumed(core, resume(conversation_id, seen.events[0].turn_id, 1))
    rest = await read_events(again, Collected(events=list(seen.events)))
    assert rest.completed is not None
    assert rest.completed.reason == pb.FINISH_REASON_ERROR
    assert rest.completed.error.code == pb.ERROR_CODE_UNAVAILABLE and rest.completed.error.retryable
    assert rest.completed.error.message == CUT_GRACE
    again.cancel()


async def test_without_a_grace_the_turn_stops_at_once_and_is_cut(
    start_service: StartService, upstream: FixtureUpstream
) -> None:
    core = await start_service(conversation_orphan_seconds=0)
    call, conversation_id = await start(core, PAUSE)
    await call.write(text("hello"))
    seen = await read_events(call, count=1)
    call.cancel()
    await upstream.client_closed.wait()
    again = await resumed(core, resume(conversation_id, seen.events[0].turn_id, 1))
    rest = await read_events(again, seen)
    assert rest.completed is not None and rest.completed.error.message == CUT_CALL_ENDED
    await again.write(text("hello again"))  # a cut turn leaves no trace in the history: send it again
    await read_events(again, count=1)
    assert [m["role"] for m in upstream.requests[-1]["messages"]] == ["user"]
    again.cancel()


async def test_a_client_that_asked_for_no_grace_has_its_answer_stopped_at_once(
    start_service: StartService, upstream: FixtureUpstream
) -> None:
    core = await start_service(conversation_orphan_seconds=30)  # the server would allow a grace
    call, conversation_id = await start(core, PAUSE, grace_ms=None)
    await call.write(text("hello"))
    seen = await read_events(call, count=1)
    call.cancel()
    async with asyncio.timeout(2):  # not the server's 30 s: the client never asked to come back for it
        await upstream.client_closed.wait()
    again = await resumed(core, resume(conversation_id, seen.events[0].turn_id, 1))
    rest = await read_events(again, seen)
    assert rest.completed is not None and rest.completed.error.message == CUT_CALL_ENDED
    again.cancel()


async def test_an_interrupt_reaches_the_turn_the_old_call_runs(
    core: RunningService, upstream: FaultUpstream
) -> None:
    # Some of the answer, then nothing until the gateway lets go: only the interrupt can end this turn.
    call, conversation_id = await start(core, "silent/20/audio_no_finish_reason")
    await call.write(text("Is a golden retriever a good family dog?"))
    seen = Collected()
    while not seen.audio:  # some of the answer's audio has arrived (and none of it was played)
        seen = await read_events(call, seen, count=len(seen.events) + 1)
    call.cancel()
    last = seen.events[-1]
    again = await resumed(core, resume(conversation_id, last.turn_id, last.sequence))
    await again.write(pb.ConverseRequest(interrupt=pb.Interrupt(played_ms=0)))
    rest = await read_events(again, seen)
    assert rest.completed is not None and rest.completed.reason == pb.FINISH_REASON_INTERRUPTED
    async with asyncio.timeout(5):
        await upstream.idle()  # the writer closed the upstream stream
    await again.write(text("Something else."))
    await read_events(again, count=1)
    # Nothing of the answer was heard: only the user's question stays.
    assert [m["role"] for m in upstream.requests[-1]["messages"]] == ["user", "user"]
    again.cancel()


def resumes(result: str) -> float:
    value = REGISTRY.get_sample_value("audiochat_conversation_resumes_total", {"result": result})
    return value or 0.0


async def test_refusals(core: RunningService) -> None:
    before = {result: resumes(result) for result in ("resumed", "not_found", "not_owner")}
    call, conversation_id = await start(core, "fixture/text_only")
    for request, metadata, code in [
        (resume("conv_" + "0" * 32), KEY, grpc.StatusCode.NOT_FOUND),
        (resume(conversation_id), (("authorization", "Bearer key-b"),), grpc.StatusCode.PERMISSION_DENIED),
        (resume(conversation_id), (), grpc.StatusCode.PERMISSION_DENIED),
    ]:
        other = core.stub.Converse(metadata=metadata)
        await other.write(request)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await other.read()
        assert refused.value.code() is code, refused.value.details()
    # The newer connection wins: the call still holding the conversation ends ABORTED.
    newer = await resumed(core, resume(conversation_id))
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await call.read()
    assert ended.value.code() is grpc.StatusCode.ABORTED
    await newer.write(text("hi"))
    assert (await read_events(newer)).completed is not None
    newer.cancel()
    counted = {result: resumes(result) - before[result] for result in before}
    assert counted == {"resumed": 1, "not_found": 1, "not_owner": 2}
