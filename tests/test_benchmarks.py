"""The benchmark harness works: simulator, relay, lean clients, load generator and report on real processes.

Tiny and short on purpose: it proves every audio piece is measured and checked on every row, that the
report refuses what it cannot measure, and that the capacity search brackets a limit; never how fast
anything is (that is `make bench`).
"""

from __future__ import annotations

import asyncio
from contextlib import ExitStack
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from benchmarks import capacity, report, rows
from benchmarks.load import RunResult, Transport, run_load
from benchmarks.pieces import HEADER, Pacing, PieceChecker, filler
from benchmarks.processes import Placement
from benchmarks.simulator import Simulator

PACING = Pacing(first_chunk_seconds=0.05, speech_seconds=0.8)
UNPINNED = Placement(frozenset(), frozenset())
STREAMS = 3


def _piece(index: int) -> bytes:
    return HEADER.pack(0, index) + filler(PACING)


def test_checker_accepts_rechunked_audio_and_catches_reordering() -> None:
    latencies: list[int] = []
    whole = b"".join(_piece(index) for index in range(PACING.audio_pieces))
    rechunked = PieceChecker(PACING, filler(PACING))
    for offset in range(0, len(whole), 1001):  # odd sizes: pieces split and merged across deltas
        rechunked.feed(whole[offset : offset + 1001], 1, latencies)
    assert rechunked.complete(PACING) and len(latencies) == PACING.audio_pieces

    swapped = PieceChecker(PACING, filler(PACING))
    for index in (0, 2, 1, *range(3, PACING.audio_pieces)):
        swapped.feed(_piece(index), 1, latencies)
    assert swapped.bad == 2 and not swapped.complete(PACING)


def _result(latencies_ms: list[float], client: float, load: float) -> RunResult:
    return RunResult(
        transport="t",
        streams=STREAMS,
        window_seconds=1.0,
        events=10,
        audio_bytes=3200,
        latencies_ms=np.asarray(latencies_ms),
        first_audio_ms=np.asarray(latencies_ms),
        turns_completed=1,
        turns_cancelled=0,
        errors={},
        bad_pieces=0,
        incomplete_turns=0,
        gateway_cpu_seconds=0.01,
        client_cpu_fraction=client,
        load_cpu_fraction=load,
    )


def test_added_latency_is_refused_when_either_load_side_is_saturated() -> None:
    direct = _result([1.0, 2.0], client=0.1, load=0.2)
    relayed = _result([3.0, 5.0], client=0.1, load=0.2)
    added = report.Row(relayed, direct).summary()
    assert not added["added_refused"] and added["added_latency_ms"]["max"] == pytest.approx(3.0)
    for busy in (replace(relayed, client_cpu_fraction=0.6), replace(relayed, load_cpu_fraction=0.95)):
        refused = report.Row(busy, direct).summary()
        assert refused["added_refused"] and refused["added_latency_ms"]["p99"] is None
    saturated_baseline = report.Row(relayed, replace(direct, client_cpu_fraction=0.7)).summary()
    assert "load client at 70%" in saturated_baseline["added_refused"]
    row = report.aggregate(
        "grpc", "grpc StreamTurn", [report.Row(relayed, replace(direct, load_cpu_fraction=1.0)).summary()]
    )
    assert report.table_row(row, None).count("refused") == 1


@pytest.mark.parametrize("limit", [1, 7, 150, 333, 1599])
def test_capacity_search_brackets_the_limit(limit: int) -> None:
    tried: list[int] = []

    def check(streams: int) -> tuple[capacity.Verdict, str]:
        tried.append(streams)
        return ("pass", "") if streams <= limit else ("fail", "")

    found = capacity.search(check, start=100, limit=1600, max_steps=20, precision=0.05)
    assert found.smallest_fail is not None and found.largest_pass <= limit < found.smallest_fail
    assert found.smallest_fail - found.largest_pass <= max(1, round(0.05 * found.largest_pass))
    assert len(tried) == len(set(tried))  # never measures a size twice


def test_capacity_search_stops_where_the_load_side_cannot_judge() -> None:
    def check(streams: int) -> tuple[capacity.Verdict, str]:
        return ("pass", "") if streams < 400 else ("unmeasurable", "load client at 80%")

    found = capacity.search(check, start=100, limit=1600, max_steps=10)
    assert found.largest_pass == 200 and found.smallest_fail is None
    assert "load side saturated at 400" in found.stopped


async def _measure(served: rows.Served, transport: Transport, think: float = 0.0) -> dict[str, Any]:
    result = await run_load(
        transport,
        STREAMS,
        PACING,
        ramp_seconds=0.3,
        window_seconds=1.5,
        think_seconds=think,
        gateway_pid=served.pid,
        metrics_url=served.metrics_url,
    )
    return report.Row(result, None).summary()


@pytest.mark.slow
async def test_every_row_relays_every_piece_in_order() -> None:
    async with Simulator(PACING) as sim:
        setup = rows.Setup(sim.port, UNPINNED, edge=True)
        with ExitStack() as stack:
            served = {
                server: await asyncio.to_thread(stack.enter_context, rows.serve(rows.ROWS[key], setup))
                for key, server in (("direct", "direct"), ("relay", "relay"), ("grpc", "gateway"))
            }
            # A cold gateway's first turns (channel setup, first imports on the path) can outlast the short
            # window on a loaded machine; one discarded round measures the relay, not its start-up.
            gateway = served["gateway"]
            await _measure(gateway, rows.ROWS["grpc"].client(gateway, STREAMS))
            summaries = {}
            for key, row in rows.ROWS.items():
                if row.server in served:
                    target = served[row.server]
                    summaries[key] = await _measure(target, row.client(target, STREAMS))
            paused = await _measure(gateway, rows.ROWS["grpc"].client(gateway, STREAMS), think=1.0)
            await asyncio.to_thread(stack.close)
    assert set(summaries) == {"direct", "relay", "grpc", "converse", "sse", "websocket", "compat"}
    for key, summary in summaries.items():
        assert summary["errors"] == 0, (key, summary["error_kinds"])
        assert summary["lost_or_reordered_pieces"] == 0 and summary["incomplete_turns"] == 0, key
        assert summary["turns_completed"] >= STREAMS and report.healthy(summary), key
        if key != "direct":
            cpu = summary["gateway_cpu_us_per_event"]
            assert isinstance(cpu, float) and cpu > 0, key
        if rows.ROWS[key].server == "gateway":  # read from the gateway's own metrics over the window
            assert set(summary["gc_pauses"]) == {"0", "1", "2"}, key
            assert summary["gc_total_ms"] >= 0, key
        else:
            assert summary["gc_pauses"] is None, key
    # Back to back, every user is in a turn nearly all the time; with think time, far less.
    busy = summaries["grpc"]["mean_active_streams"]
    idle = paused["mean_active_streams"]
    assert isinstance(busy, float) and isinstance(idle, float)
    assert busy > 0.8 * STREAMS and idle < 0.8 * STREAMS
