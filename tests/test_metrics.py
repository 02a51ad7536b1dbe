"""Metrics move by the right amounts after real turns, scraped over HTTP with the Prometheus parser."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from audiochat.v1 import audiochat_pb2 as pb
from service import metrics
from service.embedded_http import EmbeddedHTTPServer
from tests.conftest import RunningService
from tests.events import Collected, expected, text_request
from tests.upstream_server import FixtureUpstream

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
Scrape = Callable[[], Awaitable[Samples]]


@pytest.fixture
async def scrape() -> AsyncIterator[Scrape]:
    """Scrape the metrics endpoint the way Prometheus does."""
    async with EmbeddedHTTPServer(metrics.asgi_app()) as endpoint, httpx.AsyncClient() as client:

        async def read() -> Samples:
            response = await client.get(f"http://127.0.0.1:{endpoint.port}/metrics")
            assert response.status_code == 200
            samples: Samples = {}
            for family in text_string_to_metric_families(response.text):
                for sample in family.samples:
                    samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
            return samples

        yield read


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


async def run(service: RunningService, request: pb.StreamTurnRequest, transport: str = "") -> Collected:
    collected = Collected()
    metadata = (("audiochat-transport", transport),) if transport else ()
    async for event in service.stub.StreamTurn(request, metadata=metadata):
        collected.add(event)
    return collected


async def test_a_spoken_turn_moves_every_turn_metric(service: RunningService, scrape: Scrape) -> None:
    before = await scrape()
    turn = await run(service, text_request("fixture/audio_no_finish_reason"))
    after = await scrape()
    want = expected("audio_no_finish_reason")
    assert (
        delta(
            before,
            after,
            "audiochat_turns_total",
            transport="grpc",
            outcome="stop",
            upstream="chat_completions",
        )
        == 1
    )
    assert (
        delta(before, after, "audiochat_turn_duration_seconds_count", transport="grpc", outcome="stop") == 1
    )
    assert (
        delta(
            before,
            after,
            "audiochat_time_to_first_audio_seconds_count",
            transport="grpc",
            upstream="chat_completions",
        )
        == 1
    )
    assert delta(before, after, "audiochat_time_to_first_text_seconds_count", transport="grpc") == 1
    assert (
        delta(
            before, after, "audiochat_upstream_time_to_first_byte_seconds_count", upstream="chat_completions"
        )
        == 1
    )
    # Every event but the last is observed once it was handed to gRPC; the last ends the call.
    relayed = delta(before, after, "audiochat_relay_added_seconds_count", transport="grpc")
    assert len(turn.events) - 1 <= relayed <= len(turn.events)
    assert delta(before, after, "audiochat_audio_seconds_total", direction="out") == pytest.approx(
        want["audio_bytes"] / 48_000
    )
    usage = want["usage"]["completion_tokens_details"]
    assert (
        delta(before, after, "audiochat_tokens_total", direction="output", modality="audio")
        == usage["audio_tokens"]
    )
    assert (
        delta(before, after, "audiochat_tokens_total", direction="output", modality="text")
        == usage["text_tokens"]
    )
    assert after[("audiochat_active_streams", (("transport", "grpc"),))] == 0


async def test_edge_transport_label_is_kept_and_bounded(service: RunningService, scrape: Scrape) -> None:
    before = await scrape()
    await run(service, text_request("fixture/text_only"), transport="sse")
    await run(service, text_request("fixture/text_only"), transport="user-1234")  # not a known transport
    after = await scrape()
    assert (
        delta(
            before,
            after,
            "audiochat_turns_total",
            transport="sse",
            outcome="stop",
            upstream="chat_completions",
        )
        == 1
    )
    assert (
        delta(
            before,
            after,
            "audiochat_turns_total",
            transport="grpc",
            outcome="stop",
            upstream="chat_completions",
        )
        == 1
    )
    assert not any(dict(labels).get("transport") == "user-1234" for _, labels in after)


async def test_upstream_429_counts_under_its_code(
    service: RunningService, upstream: FixtureUpstream, scrape: Scrape
) -> None:
    before = await scrape()
    call = service.stub.Converse()
    await call.write(
        pb.ConverseRequest(config=pb.ConverseConfig(turn=pb.TurnConfig(model="fixture/text_only")))
    )
    await call.read()
    upstream.fail_next.append("429/rate_limit_exceeded")
    await call.write(pb.ConverseRequest(text=pb.TextInput(text="hi")))
    while not (await call.read()).event.HasField("completed"):
        pass
    call.cancel()
    after = await scrape()
    assert delta(before, after, "audiochat_upstream_errors_total", code="resource_exhausted") == 1
    assert (
        delta(
            before,
            after,
            "audiochat_turns_total",
            transport="grpc",
            outcome="error",
            upstream="chat_completions",
        )
        == 1
    )


async def test_an_interrupted_turn_counts_as_interrupted(service: RunningService, scrape: Scrape) -> None:
    before = await scrape()
    call = service.stub.Converse()
    await call.write(pb.ConverseRequest(config=pb.ConverseConfig(turn=pb.TurnConfig(model="slow/text_only"))))
    await call.read()
    await call.write(pb.ConverseRequest(text=pb.TextInput(text="hi")))
    while not (await call.read()).event.HasField("text"):
        pass
    await call.write(pb.ConverseRequest(interrupt=pb.Interrupt(played_ms=0)))
    while not (await call.read()).event.HasField("completed"):
        pass
    call.cancel()
    after = await scrape()
    assert (
        delta(
            before,
            after,
            "audiochat_turns_total",
            transport="grpc",
            outcome="interrupted",
            upstream="chat_completions",
        )
        == 1
    )
    assert delta(before, after, "audiochat_interruptions_total", transport="grpc") == 1


async def test_metric_names_and_buckets_follow_the_design(scrape: Scrape) -> None:
    metrics.for_transport("grpc")  # label children exist once a transport was seen
    samples = await scrape()
    assert any(name == "audiochat_build_info" for name, _ in samples)
    buckets = {
        float(dict(labels)["le"])
        for name, labels in samples
        if name == "audiochat_time_to_first_audio_seconds_bucket"
    }
    assert {0.001, 0.04, 0.25, 2.5, 40.0} <= buckets


async def test_a_barge_in_after_the_answer_arrived_counts_as_an_interruption(
    service: RunningService, scrape: Scrape
) -> None:
    before = await scrape()
    call = service.stub.Converse()
    await call.write(
        pb.ConverseRequest(
            config=pb.ConverseConfig(turn=pb.TurnConfig(model="fixture/audio_no_finish_reason"))
        )
    )
    await call.read()
    await call.write(pb.ConverseRequest(text=pb.TextInput(text="hi")))
    while not (await call.read()).event.HasField("completed"):
        pass
    await call.write(pb.ConverseRequest(interrupt=pb.Interrupt(played_ms=700)))
    await call.done_writing()
    while await call.read() is not grpc.aio.EOF:
        pass
    after = await scrape()
    assert delta(before, after, "audiochat_interruptions_total", transport="grpc") == 1
    assert (
        delta(
            before,
            after,
            "audiochat_turns_total",
            transport="grpc",
            outcome="stop",
            upstream="chat_completions",
        )
        == 1
    )


async def test_the_core_port_serves_metrics_only_at_slash_metrics_and_without_created_series(
    scrape: Scrape,
) -> None:
    samples = await scrape()
    assert not [name for name, _ in samples if name.endswith("_created")]
    assert any(name == "python_info" for name, _ in samples), "the process's own families are here"
    assert not [name for name, _ in samples if name.startswith(("audiochat_edge_", "audiochat_resumes"))]
    async with EmbeddedHTTPServer(metrics.asgi_app()) as endpoint, httpx.AsyncClient() as client:
        for path in ("/", "/metricsx", "/favicon.ico", "/v1/turns"):
            assert (await client.get(f"http://127.0.0.1:{endpoint.port}{path}")).status_code == 404, path


def test_an_edge_only_process_exports_the_edge_and_the_process_families_and_no_core_ones() -> None:
    with_process, _ = metrics.edge_exposition(with_process=True)
    families = {family.name for family in text_string_to_metric_families(with_process.decode())}
    assert {
        "audiochat_edge_relay_added_seconds",
        "audiochat_resumes",
        "python_info",
        "audiochat_build_info",
        "audiochat_gc_pause_seconds",
    } <= families
    assert "audiochat_edge_active_streams" in families
    assert "audiochat_sse_resume_buffer_bytes" in families
    assert not {name for name in families if name.startswith("audiochat_")} - {
        "audiochat_edge_active_streams",
        "audiochat_sse_resume_buffer_bytes",
        "audiochat_sse_resume_turns",
        "audiochat_resume_store_errors",
        "audiochat_edge_relay_added_seconds",
        "audiochat_resumes",
        "audiochat_build_info",
        "audiochat_gc_pause_seconds",
    }, "core families would read as zeros"
    # The core's own transport never passes through an edge, so it has no edge series.
    assert 'transport="grpc"' not in with_process.decode()
    assert "_created" not in with_process.decode()


async def test_every_collection_is_timed_by_generation(scrape: Scrape) -> None:
    metrics.watch_gc()
    metrics.watch_gc()  # a second call must not time collections twice
    # Only the collections below: an automatic full one (the scrapes allocate) would be counted too.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        before = await scrape()
        gc.collect(0)
        gc.collect(2)
        gc.collect(2)
        after = await scrape()
    finally:
        if was_enabled:
            gc.enable()
    assert delta(before, after, "audiochat_gc_pause_seconds_count", generation="2") == 2
    assert delta(before, after, "audiochat_gc_pause_seconds_count", generation="0") >= 1
    assert delta(before, after, "audiochat_gc_pause_seconds_sum", generation="2") > 0
