"""The normalizer, table-driven over the captures, plus every quirk of the wire format pinned."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audiochat.v1 import audiochat_pb2 as pb
from service.normalizer import Normalizer, Outcome
from service.sse_decoder import DONE, SSEDecoder
from service.usage import to_upstream as usage_to_upstream

FIXTURES = Path(__file__).parent / "fixtures" / "upstream"
CAPTURES = sorted(p.name.removesuffix(".sse") for p in FIXTURES.glob("*.sse"))
REASONS = {
    "stop": pb.FINISH_REASON_STOP,
    "length": pb.FINISH_REASON_LENGTH,
    "tool_calls": pb.FINISH_REASON_TOOL_CALLS,
    "error": pb.FINISH_REASON_ERROR,
}


def decode(pieces: Iterable[bytes]) -> tuple[list[Mapping[str, Any]], bool]:
    """Run byte pieces through the SSE decoder: (chunks, whether [DONE] arrived)."""
    decoder = SSEDecoder()
    chunks: list[Mapping[str, Any]] = []
    saw_done = False
    for piece in pieces:
        for data in decoder.feed(piece):
            if data == DONE:
                saw_done = True
            else:
                chunks.append(json.loads(data))
    for data in decoder.close():
        chunks.append(json.loads(data))
    return chunks, saw_done


def normalize(chunks: Iterable[Mapping[str, Any]], saw_done: bool) -> tuple[list[pb.TurnEvent], Outcome]:
    normalizer = Normalizer()
    events = [event for chunk in chunks for event in normalizer.feed(chunk)]
    return events, normalizer.finish(saw_done)


def audio_of(events: list[pb.TurnEvent]) -> bytes:
    return b"".join(e.audio.data for e in events if e.HasField("audio"))


def text_of(events: list[pb.TurnEvent]) -> str:
    return "".join(e.text.text for e in events if e.HasField("text"))


def check_against_expected(name: str, events: list[pb.TurnEvent], outcome: Outcome) -> None:
    """Assert events and outcome match NAME.expected.json."""
    expected = json.loads((FIXTURES / f"{name}.expected.json").read_text())
    audio = audio_of(events)
    assert text_of(events) == expected["text"] == outcome.transcript
    assert len(audio) == expected["audio_bytes"]
    assert hashlib.sha256(audio).hexdigest() == expected["audio_sha256"]
    assert outcome.audio_samples * 2 == expected["audio_bytes"]
    assert outcome.audio_id == (expected["audio_id"] or "")
    assert outcome.audio_expires_at == (expected["expires_at"] or 0)
    assert outcome.reason == REASONS[expected["finish_reason"]]
    sources = {e.text.source for e in events if e.HasField("text")}
    want = pb.TEXT_SOURCE_TRANSCRIPT if expected["modality"] == "audio" else pb.TEXT_SOURCE_CONTENT
    assert sources == ({want} if expected["text"] else set())
    want_calls = expected.get("tool_calls") or []
    assert [call_json(c) for c in outcome.tool_calls] == want_calls
    assert [call_json(c) for c in fold_tool_deltas(events)] == want_calls
    usages = [e.usage for e in events if e.HasField("usage")]
    if expected["usage"] is None:
        assert usages == []
    else:
        assert [usage_to_upstream(u) for u in usages] == [expected["usage"]]
    if expected["error"] is None:
        assert outcome.error is None
    else:
        assert outcome.error is not None
        assert outcome.error.upstream_code == expected["error"]["type"]
        assert outcome.error.retryable


def call_json(call: pb.ToolCall) -> dict[str, str]:
    return {"id": call.id, "name": call.name, "arguments": call.arguments}


def fold_tool_deltas(events: list[pb.TurnEvent]) -> list[pb.ToolCall]:
    """Rebuild the calls from ToolCallDelta events as a client would: id and name set, arguments appended."""
    calls: dict[int, pb.ToolCall] = {}
    for event in events:
        if event.HasField("tool_call"):
            delta = event.tool_call
            call = calls.setdefault(delta.index, pb.ToolCall())
            if delta.id:
                assert not call.id, "a call's id arrives once"
                call.id = delta.id
            if delta.name:
                assert not call.name, "a call's name arrives once"
                call.name = delta.name
            call.arguments += delta.arguments
    return [calls[index] for index in sorted(calls)]


def check_sample_placement(events: list[pb.TurnEvent]) -> None:
    """Every AudioDelta holds whole samples and starts where the previous one ended."""
    position = 0
    for event in events:
        if event.HasField("audio"):
            assert len(event.audio.data) % 2 == 0
            assert event.audio.start_sample == position
            assert event.audio.format.sample_rate_hz == 24_000
            position += len(event.audio.data) // 2


@pytest.mark.parametrize("name", CAPTURES)
def test_capture_normalizes_to_expected(name: str) -> None:
    events, outcome = normalize(*decode([(FIXTURES / f"{name}.sse").read_bytes()]))
    check_against_expected(name, events, outcome)
    check_sample_placement(events)


def test_every_capture_is_covered() -> None:
    assert set(CAPTURES) == {p.name.removesuffix(".expected.json") for p in FIXTURES.glob("*.expected.json")}
    assert len(CAPTURES) >= 4


@settings(max_examples=40, deadline=None)
@given(
    name=st.sampled_from(CAPTURES), cuts=st.lists(st.integers(min_value=0, max_value=200_000), max_size=60)
)
def test_network_split_points_do_not_change_events(name: str, cuts: list[int]) -> None:
    body = (FIXTURES / f"{name}.sse").read_bytes()
    points = sorted({min(c, len(body)) for c in cuts} | {0, len(body)})
    pieces = [body[a:b] for a, b in itertools.pairwise(points)]
    events, outcome = normalize(*decode(pieces))
    check_against_expected(name, events, outcome)


def audio_chunk(**audio: Any) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"audio": audio}, "finish_reason": None}]}


@settings(max_examples=60, deadline=None)
@given(pcm=st.binary(min_size=2, max_size=3000), sizes=st.lists(st.integers(1, 257), min_size=1, max_size=40))
def test_odd_byte_pieces_are_carried_into_whole_samples(pcm: bytes, sizes: list[int]) -> None:
    pcm = pcm[: len(pcm) // 2 * 2]
    pieces, offset, index = [], 0, 0
    while offset < len(pcm):
        size = sizes[index % len(sizes)]
        pieces.append(pcm[offset : offset + size])
        offset, index = offset + size, index + 1
    chunks = [audio_chunk(data=base64.b64encode(p).decode()) for p in pieces]
    events, outcome = normalize([*chunks, audio_chunk(expires_at=1)], saw_done=True)
    assert audio_of(events) == pcm
    check_sample_placement(events)
    assert outcome.audio_samples == len(pcm) // 2


def test_repeated_audio_id_is_set_not_concatenated() -> None:
    chunks = [
        audio_chunk(id="audio_X", transcript="Hi"),
        {"choices": [{"delta": {"role": "assistant", "audio": {"id": "audio_X", "data": "AAAA"}}}]},
        audio_chunk(expires_at=99),
    ]
    _, outcome = normalize(chunks, saw_done=True)
    assert outcome.audio_id == "audio_X"
    assert outcome.audio_expires_at == 99


@pytest.mark.parametrize(
    ("tail", "reason"),
    [
        ([audio_chunk(expires_at=5)], pb.FINISH_REASON_STOP),
        (
            [{"choices": [{"delta": {}, "finish_reason": "stop"}]}, audio_chunk(expires_at=5)],
            pb.FINISH_REASON_STOP,
        ),
        (
            [audio_chunk(expires_at=5), {"choices": [{"delta": {}, "finish_reason": "length"}]}],
            pb.FINISH_REASON_LENGTH,
        ),
        ([{"choices": [{"delta": {}, "finish_reason": "content_filter"}]}], pb.FINISH_REASON_CONTENT_FILTER),
    ],
)
def test_finish_reason_in_any_order_or_absent(tail: list[dict[str, Any]], reason: int) -> None:
    _, outcome = normalize([audio_chunk(id="audio_1", transcript="ok"), *tail], saw_done=True)
    assert outcome.reason == reason
    assert outcome.error is None


def test_usage_chunk_with_empty_choices_and_unknown_fields() -> None:
    chunks: list[dict[str, Any]] = [
        {"choices": [{"delta": {"content": "hi", "brand_new_field": {"x": 1}}}], "obfuscation": "zzz"},
        {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}, "service_tier": "default"},
    ]
    events, outcome = normalize(chunks, saw_done=True)
    assert text_of(events) == "hi"
    (usage,) = [e.usage for e in events if e.HasField("usage")]
    assert (usage.input_tokens, usage.output_tokens, usage.output_audio_tokens) == (3, 2, 0)
    assert outcome.reason == pb.FINISH_REASON_STOP


def test_stream_cut_without_done_or_any_end_marker_is_an_error() -> None:
    _, outcome = normalize([audio_chunk(id="audio_1", transcript="Once upon")], saw_done=False)
    assert outcome.reason == pb.FINISH_REASON_ERROR
    assert outcome.error is not None and outcome.error.code == pb.ERROR_CODE_UNAVAILABLE
    assert outcome.transcript == "Once upon"


def test_error_frame_stops_the_answer_and_maps_its_type() -> None:
    normalizer = Normalizer()
    normalizer.feed(audio_chunk(transcript="Sure"))
    normalizer.feed({"error": {"message": "slow down", "type": "tokens", "code": "rate_limit_exceeded"}})
    assert normalizer.failed
    outcome = normalizer.finish(saw_done=False)
    assert outcome.reason == pb.FINISH_REASON_ERROR
    assert outcome.error is not None
    assert outcome.error.code == pb.ERROR_CODE_RESOURCE_EXHAUSTED
    assert outcome.error.message == "slow down"


def test_refusal_text_reaches_the_listener() -> None:
    events, outcome = normalize([{"choices": [{"delta": {"refusal": "I can't help with that."}}]}], True)
    assert text_of(events) == "I can't help with that." == outcome.transcript


def test_sse_decoder_handles_crlf_comments_and_multiline_data() -> None:
    decoder = SSEDecoder()
    events = decoder.feed(b': keep-alive\r\nevent: x\r\ndata: {"a":\r\ndata: 1}\r\n\r\ndata: [DONE]')
    assert events == [b'{"a":\n1}']
    assert decoder.close() == [DONE]


def tool_chunk(*pieces: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"tool_calls": list(pieces)}, "finish_reason": finish_reason}]}


def first_piece(index: int, call_id: str, name: str) -> dict[str, Any]:
    return {"index": index, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}


def args_piece(index: int, arguments: str) -> dict[str, Any]:
    return {"index": index, "function": {"arguments": arguments}}


def test_interleaved_calls_are_folded_by_index_not_arrival() -> None:
    chunks = [
        tool_chunk(first_piece(1, "call_B", "get_time")),
        tool_chunk(first_piece(0, "call_A", "get_weather"), args_piece(1, '{"tz":"Eur')),
        tool_chunk(args_piece(0, '{"city":"Pa')),
        tool_chunk(args_piece(1, 'ope/Paris"}')),
        tool_chunk(args_piece(0, 'ris \\u00e9t\\u00e9"}')),
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    ]
    events, outcome = normalize(chunks, saw_done=True)
    want = [
        {"id": "call_A", "name": "get_weather", "arguments": '{"city":"Paris \\u00e9t\\u00e9"}'},
        {"id": "call_B", "name": "get_time", "arguments": '{"tz":"Europe/Paris"}'},
    ]
    assert outcome.reason == pb.FINISH_REASON_TOOL_CALLS
    assert [call_json(c) for c in outcome.tool_calls] == want
    assert [call_json(c) for c in fold_tool_deltas(events)] == want
    # One event per piece, in arrival order: a client sees the calls being written as they are.
    assert [e.tool_call.index for e in events] == [1, 0, 1, 0, 1, 0]


def test_speech_before_the_call_is_kept() -> None:
    pcm = bytes(range(10))
    chunks = [
        audio_chunk(id="audio_P", transcript="Let me"),
        audio_chunk(transcript=" check."),
        audio_chunk(id="audio_P", data=base64.b64encode(pcm).decode()),
        audio_chunk(expires_at=1234),
        tool_chunk(first_piece(0, "call_W", "get_weather")),
        tool_chunk(args_piece(0, '{"city":"Oslo"}')),
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    ]
    events, outcome = normalize(chunks, saw_done=True)
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds == ["text", "text", "audio", "tool_call", "tool_call"]
    assert audio_of(events) == pcm
    assert (outcome.transcript, outcome.audio_id, outcome.audio_expires_at) == (
        "Let me check.",
        "audio_P",
        1234,
    )
    assert outcome.reason == pb.FINISH_REASON_TOOL_CALLS
    assert [call_json(c) for c in outcome.tool_calls] == [
        {"id": "call_W", "name": "get_weather", "arguments": '{"city":"Oslo"}'}
    ]


def test_calls_without_index_or_with_repeated_ids_as_some_compatible_servers_send() -> None:
    chunks = [
        tool_chunk({"id": "call_1", "function": {"name": "a", "arguments": "{}"}}),
        tool_chunk({"id": "call_2", "function": {"name": "b", "arguments": '{"x":'}}),
        tool_chunk({"id": "call_2", "function": {"name": "b", "arguments": "1}"}}),
        tool_chunk({"function": {"arguments": ""}}, finish_reason="tool_calls"),
    ]
    _, outcome = normalize(chunks, saw_done=True)
    assert [call_json(c) for c in outcome.tool_calls] == [
        {"id": "call_1", "name": "a", "arguments": "{}"},
        {"id": "call_2", "name": "b", "arguments": '{"x":1}'},
    ]


def test_too_many_tool_calls_fail_the_turn_instead_of_growing() -> None:
    from service.tool_calls import MAX_TOOL_CALLS

    normalizer = Normalizer()
    for index in range(MAX_TOOL_CALLS + 1):
        normalizer.feed(tool_chunk(first_piece(index, f"call_{index}", "f")))
        if normalizer.failed:
            break
    assert normalizer.failed
    outcome = normalizer.finish(saw_done=True)
    assert outcome.reason == pb.FINISH_REASON_ERROR and outcome.tool_calls == []
    assert outcome.error is not None and str(MAX_TOOL_CALLS) in outcome.error.message
