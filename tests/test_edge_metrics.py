"""After a turn through each edge transport, the edge's /metrics and the core's moved by the right amounts,
each family in exactly one of them."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from tests.edge_fixtures import RunningEdge, StartEdge

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples_of(text: str) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def scrape(edge: RunningEdge) -> Samples:
    """The edge's /metrics over HTTP and the core's exposition (this test runs the core in-process)."""
    async with httpx.AsyncClient(base_url=edge.base_url) as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
    at_edge, at_core = samples_of(response.text), samples_of(generate_latest(REGISTRY).decode())
    assert not {name for name, _ in at_edge} & {name for name, _ in at_core}, "a family exported twice"
    return at_edge | at_core


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


async def sse_turn(edge: RunningEdge) -> str:
    async with httpx.AsyncClient(base_url=edge.base_url) as client:
        response = await client.post(
            "/v1/turns", json={"text": "Hi", "model": "fixture/audio_no_finish_reason"}
        )
    assert response.status_code == 200
    return response.text


async def websocket_turn(edge: RunningEdge) -> None:
    async with connect(edge.ws_url, subprotocols=["audiochat.v1"], compression=None) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps({"type": "config", "model": "fixture/audio_no_finish_reason"}))
        await ws.send(json.dumps({"type": "text", "text": "Hi"}))
        async for message in ws:
            if isinstance(message, str) and json.loads(message)["type"] == "turn.completed":
                return


async def openai_turn(edge: RunningEdge) -> None:
    client = openai.AsyncOpenAI(base_url=f"{edge.base_url}/v1", api_key="none", max_retries=0)
    stream = await client.chat.completions.create(
        model="fixture/audio_no_finish_reason",
        modalities=["text", "audio"],
        audio={"voice": "alloy", "format": "pcm16"},
        messages=[{"role": "user", "content": "Hi"}],
        stream=True,
    )
    async for _ in stream:
        pass
    await client.close()


@pytest.mark.parametrize(
    ("transport", "run"), [("sse", sse_turn), ("websocket", websocket_turn), ("openai", openai_turn)]
)
async def test_a_turn_through_each_edge_transport_is_counted(
    edge: RunningEdge, transport: str, run: object
) -> None:
    before = await scrape(edge)
    await run(edge)  # type: ignore[operator]
    after = await scrape(edge)
    assert (
        delta(
            before,
            after,
            "audiochat_turns_total",
            transport=transport,
            outcome="stop",
            upstream="chat_completions",
        )
        == 1
    )
    assert (
        delta(
            before,
            after,
            "audiochat_time_to_first_audio_seconds_count",
            transport=transport,
            upstream="chat_completions",
        )
        == 1
    )
    assert delta(before, after, "audiochat_audio_seconds_total", direction="out") > 2.5
    # The edge's own hop, per event it wrote (26 audio pieces and 9 transcript pieces in this capture).
    assert delta(before, after, "audiochat_edge_relay_added_seconds_count", transport=transport) >= 26
    assert after[("audiochat_active_streams", (("transport", transport),))] == 0
    assert after[("audiochat_edge_active_streams", ())] == 0, "the edge's own count is back to zero"


async def test_sse_resumes_are_counted_by_result(edge: RunningEdge) -> None:
    body = await sse_turn(edge)
    last_id = [line for line in body.splitlines() if line.startswith("id: ")][-1].removeprefix("id: ")
    turn_id = last_id.split(":")[0]
    before = await scrape(edge)
    async with httpx.AsyncClient(base_url=edge.base_url) as client:
        assert (
            await client.get(f"/v1/turns/{turn_id}/events", headers={"Last-Event-ID": f"{turn_id}:3"})
        ).is_success
        missing = await client.get("/v1/turns/turn_gone/events", headers={"Last-Event-ID": "turn_gone:3"})
        assert missing.status_code == 404
    after = await scrape(edge)
    assert delta(before, after, "audiochat_resumes_total", result="resumed") == 1
    assert delta(before, after, "audiochat_resumes_total", result="not_found") == 1


async def test_the_edge_counts_the_streams_it_relays_while_they_are_open(edge: RunningEdge) -> None:
    before = await scrape(edge)
    async with connect(edge.ws_url, subprotocols=["audiochat.v1"], compression=None) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps({"type": "config", "model": "fixture/audio_no_finish_reason"}))
        assert json.loads(await ws.recv())["type"] == "conversation.started"
        during = await scrape(edge)
    assert delta(before, during, "audiochat_edge_active_streams") == 1
    for _ in range(100):  # the session ends just after the close handshake
        if delta(before, await scrape(edge), "audiochat_edge_active_streams") == 0:
            break
        await asyncio.sleep(0.05)
    assert delta(before, await scrape(edge), "audiochat_edge_active_streams") == 0


async def test_the_resume_store_reports_what_it_holds_until_ended_turns_expire(start_edge: StartEdge) -> None:
    edge = await start_edge(resume_seconds=0.5)  # heartbeats (not kept) 15 s apart: none in this body
    before = await scrape(edge)
    assert before[("audiochat_sse_resume_turns", ())] == 0
    body = await sse_turn(edge)
    held = await scrape(edge)
    # The ended turn is kept for a resume: every event's bytes as they were written.
    assert held[("audiochat_sse_resume_turns", ())] == 1
    assert held[("audiochat_sse_resume_buffer_bytes", ())] == len(body.encode())
    for _ in range(100):
        after = await scrape(edge)
        if after[("audiochat_sse_resume_turns", ())] == 0:
            break
        await asyncio.sleep(0.05)
    assert after[("audiochat_sse_resume_turns", ())] == 0
    assert after[("audiochat_sse_resume_buffer_bytes", ())] == 0
