"""StreamTurn end to end: real gRPC, the real openai SDK, real HTTP to a server replaying captures."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from audiochat.v1 import audiochat_pb2 as pb
from tests.conftest import RunningService, StartService
from tests.events import FIXTURES, Collected, text_request
from tests.upstream_server import FixtureUpstream

CAPTURES = sorted(p.name.removesuffix(".sse") for p in FIXTURES.glob("*.sse"))


async def collect(service: RunningService, request: pb.StreamTurnRequest) -> Collected:
    collected = Collected()
    async for event in service.stub.StreamTurn(request):
        collected.add(event)
    return collected


@pytest.mark.parametrize("name", CAPTURES)
async def test_stream_turn_relays_each_capture(service: RunningService, name: str) -> None:
    collected = await collect(service, text_request(f"fixture/{name}"))
    collected.assert_matches(name)
    started = collected.events[0].started
    assert started.model == f"fixture/{name}"
    assert started.upstream_request_id == "req_fixture"


async def test_request_reaches_upstream_in_its_documented_shape(
    service: RunningService, upstream: FixtureUpstream
) -> None:
    request = text_request("fixture/audio_no_finish_reason")
    request.config.voice = "voice_custom123"
    request.config.instructions = "Be brief."
    request.config.temperature = 0.5
    await collect(service, request)
    sent = upstream.requests[-1]
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}
    assert sent["modalities"] == ["text", "audio"]
    assert sent["audio"] == {"voice": {"id": "voice_custom123"}, "format": "pcm16"}
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
    assert sent["messages"][-1] == {"role": "user", "content": "Is a golden retriever a good family dog?"}
    assert sent["temperature"] == 0.5


async def test_text_only_modality_sends_no_audio_request(
    service: RunningService, upstream: FixtureUpstream
) -> None:
    request = text_request("fixture/text_only")
    request.config.modalities.append(pb.MODALITY_TEXT)
    collected = await collect(service, request)
    collected.assert_matches("text_only")
    assert upstream.requests[-1]["modalities"] == ["text"]
    assert "audio" not in upstream.requests[-1]
    assert not collected.events[0].started.HasField("audio_format")


@pytest.mark.parametrize(
    ("model", "status", "retry_after_ms"),
    [
        ("status/429/rate_limit_exceeded", grpc.StatusCode.RESOURCE_EXHAUSTED, "1500"),
        ("status/429/insufficient_quota", grpc.StatusCode.RESOURCE_EXHAUSTED, "1500"),
        ("status/500/server_error", grpc.StatusCode.UNAVAILABLE, None),
        ("status/503/", grpc.StatusCode.UNAVAILABLE, None),
        ("status/400/unsupported_format", grpc.StatusCode.INVALID_ARGUMENT, None),
        ("status/401/invalid_api_key", grpc.StatusCode.UNAUTHENTICATED, None),
    ],
)
async def test_upstream_refusals_before_the_answer_are_call_statuses(
    service: RunningService, model: str, status: grpc.StatusCode, retry_after_ms: str | None
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await collect(service, text_request(model))
    assert raised.value.code() == status
    trailers = dict(raised.value.trailing_metadata() or ())
    assert trailers.get("retry-after-ms") == retry_after_ms
    if status == grpc.StatusCode.UNAUTHENTICATED:
        assert "sk-" not in (raised.value.details() or "")


async def test_unreachable_upstream_is_unavailable(start_service: StartService) -> None:
    service = await start_service(base_url="http://127.0.0.1:9/v1")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await collect(service, text_request("fixture/text_only"))
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_expired_audio_id_falls_back_to_transcript(
    service: RunningService, upstream: FixtureUpstream
) -> None:
    request = text_request("fixture/text_only", "And cats?")
    request.history.add().user.text = "Dogs?"
    request.history.add().assistant.CopyFrom(
        pb.AssistantMessage(text="Dogs are great.", audio_id="audio_old", audio_expires_at=1_000)
    )
    request.history.add().user.text = "Birds?"
    request.history.add().assistant.CopyFrom(
        pb.AssistantMessage(text="Birds sing.", audio_id="audio_live", audio_expires_at=4_000_000_000)
    )
    await collect(service, request)
    messages = upstream.requests[-1]["messages"]
    assert messages[0] == {"role": "user", "content": "Dogs?"}
    assert messages[1] == {"role": "assistant", "content": "Dogs are great."}
    assert messages[3] == {"role": "assistant", "audio": {"id": "audio_live"}}


async def test_audio_not_found_is_retried_with_transcripts(
    service: RunningService, upstream: FixtureUpstream
) -> None:
    request = text_request("status/400/audio_not_found")
    request.history.add().user.text = "Dogs?"
    request.history.add().assistant.CopyFrom(
        pb.AssistantMessage(text="Dogs are great.", audio_id="audio_gone")
    )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await collect(service, request)
    # Both attempts were refused by the scripted upstream; the second carried the transcript, not the id.
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [r["messages"][1] for r in upstream.requests] == [
        {"role": "assistant", "audio": {"id": "audio_gone"}},
        {"role": "assistant", "content": "Dogs are great."},
    ]


async def test_cancel_mid_answer_closes_the_upstream_connection(
    service: RunningService, upstream: FixtureUpstream
) -> None:
    tasks_before = len(asyncio.all_tasks())
    call = service.stub.StreamTurn(text_request("slow/audio_no_finish_reason"))
    async for event in call:
        if event.HasField("audio"):
            break
    call.cancel()
    await asyncio.wait_for(upstream.client_closed.wait(), timeout=2.0)
    assert upstream.closed_by_client == 1
    for _ in range(100):
        if service.server.servicer.active_streams == 0 and len(asyncio.all_tasks()) <= tasks_before:
            break
        await asyncio.sleep(0.02)
    assert service.server.servicer.active_streams == 0
    assert len(asyncio.all_tasks()) <= tasks_before


async def test_concurrent_stream_limit_answers_resource_exhausted(start_service: StartService) -> None:
    service = await start_service(max_streams=1)
    call = service.stub.StreamTurn(text_request("slow/audio_no_finish_reason"))
    first = await call.read()
    assert first.HasField("started")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await collect(service, text_request("fixture/text_only"))
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    call.cancel()
    for _ in range(100):
        if service.server.servicer.active_streams == 0:
            break
        await asyncio.sleep(0.02)
    (await collect(service, text_request("fixture/text_only"))).assert_matches("text_only")
