"""Usage reaches every client exactly as the upstream sent it, and the token metrics count the same numbers
(issue 9, kind 4). The capture `audio_partial_usage` reports totals that are not sums of its details and
`completion_tokens_details` with `audio_tokens` only."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
from prometheus_client import REGISTRY

from tests.conftest import RunningService
from tests.edge_fixtures import RunningEdge
from tests.events import Collected, expected, text_request

MODEL = "fixture/audio_partial_usage"
SENT = expected("audio_partial_usage")["usage"]
QUESTION: Any = [{"role": "user", "content": "Hi"}]


def tokens(direction: str, modality: str) -> float:
    value = REGISTRY.get_sample_value(
        "audiochat_tokens_total", {"direction": direction, "modality": modality}
    )
    return value or 0.0


async def test_grpc_usage_leaves_unsent_counts_unset_and_metrics_count_what_was_sent(
    service: RunningService,
) -> None:
    before = {key: tokens(*key) for key in [("output", "audio"), ("output", "text"), ("output", "other")]}
    collected = Collected()
    async for event in service.stub.StreamTurn(text_request(MODEL)):
        collected.add(event)
    usage = collected.usage
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (131, 92, 223)
    assert usage.output_audio_tokens == 74
    assert not usage.HasField("output_text_tokens") and not usage.HasField("input_text_tokens")
    moved = {key: tokens(*key) - before[key] for key in before}
    # 74 audio tokens, and the 18 the upstream did not attribute: counted as "other", not as text.
    assert moved == {("output", "audio"): 74, ("output", "text"): 0, ("output", "other"): 18}


async def test_compat_usage_is_the_upstreams_streamed_and_not(edge: RunningEdge) -> None:
    client = openai.AsyncOpenAI(base_url=f"{edge.base_url}/v1", api_key="sk-x", max_retries=0)
    async with httpx.AsyncClient(base_url=edge.base_url) as http:
        response = await http.post(
            "/v1/chat/completions",
            json={
                "model": MODEL,
                "modalities": ["text", "audio"],
                "audio": {"voice": "alloy", "format": "pcm16"},
                "messages": QUESTION,
                "stream": True,
                "stream_options": {"include_usage": True},
            },
        )
    chunks = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: {")]
    assert [chunk["usage"] for chunk in chunks if chunk.get("usage")] == [SENT]
    whole = await client.chat.completions.create(
        model=MODEL,
        modalities=["text", "audio"],
        audio={"voice": "alloy", "format": "wav"},
        messages=QUESTION,
    )
    await client.close()
    assert whole.usage is not None
    assert whole.usage.model_dump(exclude_unset=True) == SENT


async def test_sse_usage_event_holds_only_what_was_sent(edge: RunningEdge) -> None:
    async with httpx.AsyncClient(base_url=edge.base_url) as http:
        response = await http.post("/v1/turns", json={"text": "Hi", "model": MODEL})
    blocks = [block for block in response.text.split("\n\n") if block.startswith("event: usage")]
    assert len(blocks) == 1
    data = json.loads(blocks[0].split("data: ", 1)[1])
    assert data == {"input_tokens": 131, "output_tokens": 92, "total_tokens": 223, "output_audio_tokens": 74}
