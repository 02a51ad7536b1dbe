"""The OpenAI-compatible route off the happy path: a non-streamed request whose client gives up closes the
upstream at once (issue 10 item 5), and `GET /v1/models` lists what the upstream offers, or the configured
model when the upstream has no list (issue 9 "Also")."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest

from tests.conftest import StartService
from tests.edge_fixtures import RunningEdge, StartEdge
from tests.upstream_server import SLOW_EVENT_SECONDS, FixtureUpstream, fixture_events

SLOW = "slow/audio_no_finish_reason"
QUESTION = [{"role": "user", "content": "Hi"}]


@pytest.mark.parametrize("audio", [False, True])
async def test_non_streamed_client_that_gives_up_closes_the_upstream(
    edge: RunningEdge, upstream: FixtureUpstream, audio: bool
) -> None:
    whole_answer_seconds = len(fixture_events("audio_no_finish_reason")) * SLOW_EVENT_SECONDS
    body: dict[str, object] = {"model": SLOW, "messages": QUESTION}
    if audio:
        body |= {"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"}}
    async with httpx.AsyncClient(base_url=edge.base_url) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.post("/v1/chat/completions", json=body, timeout=0.3)
    # The answer would take ~2 s to stream; the upstream must see its connection closed long before that.
    await asyncio.wait_for(upstream.client_closed.wait(), timeout=whole_answer_seconds / 2)
    assert upstream.closed_by_client == 1


async def test_models_lists_the_upstreams_models(edge: RunningEdge, upstream: FixtureUpstream) -> None:
    upstream.models = ["gpt-4o-audio-preview", "gpt-audio-mini"]
    async with openai.AsyncOpenAI(base_url=f"{edge.base_url}/v1", api_key="sk-x", max_retries=0) as client:
        page = await client.models.list()
    assert [model.id for model in page.data] == ["gpt-4o-audio-preview", "gpt-audio-mini"]
    assert all(model.object == "model" and model.owned_by == "upstream-org" for model in page.data)


async def test_models_without_an_upstream_list_is_the_configured_model(
    start_service: StartService, start_edge: StartEdge, upstream: FixtureUpstream
) -> None:
    upstream.models = None  # the upstream answers 404 on /v1/models, as many compatible servers do
    edge = await start_edge(await start_service(model="my-audio-model"))
    async with httpx.AsyncClient(base_url=edge.base_url) as client:
        response = await client.get("/v1/models")
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    assert [(model["id"], model["object"]) for model in body["data"]] == [("my-audio-model", "model")]


async def test_models_upstream_refusal_is_not_a_list(edge: RunningEdge, upstream: FixtureUpstream) -> None:
    upstream.models = ["x"]
    upstream.error_next.append((503, {"error": {"message": "down", "type": "server_error"}}, {}))
    async with httpx.AsyncClient(base_url=edge.base_url) as client:
        response = await client.get("/v1/models")
    assert response.status_code == 502
    assert response.json()["error"]["message"] == "down"


async def test_models_needs_a_key_when_the_edge_has_keys(
    start_edge: StartEdge, upstream: FixtureUpstream
) -> None:
    upstream.models = ["gpt-audio"]
    edge = await start_edge(api_keys="edge-key")
    async with httpx.AsyncClient(base_url=edge.base_url) as client:
        refused = await client.get("/v1/models")
        accepted = await client.get("/v1/models", headers={"authorization": "Bearer edge-key"})
    assert refused.status_code == 401
    assert accepted.status_code == 200 and accepted.json()["data"][0]["id"] == "gpt-audio"


async def test_compat_answers_invent_no_fingerprint_or_tier(edge: RunningEdge) -> None:
    """The core does not relay the upstream's system_fingerprint or service_tier: unknown, never made up."""
    body = {"model": "fixture/text_only", "messages": QUESTION}
    async with httpx.AsyncClient(base_url=edge.base_url) as client:
        whole = (await client.post("/v1/chat/completions", json=body)).json()
        streamed = await client.post("/v1/chat/completions", json={**body, "stream": True})
    assert "service_tier" not in whole and whole["system_fingerprint"] is None
    chunks = [json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: {")]
    assert chunks and all(chunk["system_fingerprint"] is None for chunk in chunks)
