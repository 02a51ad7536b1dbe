"""The benchmark harness works: simulator, load generator and report against a real `audiochat serve`.

Tiny and short on purpose: it proves every audio piece is measured and checked, never how fast anything is.
"""

from __future__ import annotations

import asyncio

import pytest

from benchmarks import report
from benchmarks.clients import GrpcConverse, GrpcStreamTurn, OpenAIDirect
from benchmarks.load import Transport, run_load
from benchmarks.pieces import HEADER, Pacing, PieceChecker, filler
from benchmarks.processes import Placement, start_gateway
from benchmarks.simulator import Simulator

PACING = Pacing(first_chunk_seconds=0.05, speech_seconds=0.8)
UNPINNED = Placement(frozenset(), frozenset())


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


@pytest.mark.slow
async def test_every_transport_relays_every_piece_in_order() -> None:
    async with Simulator(PACING) as sim:
        gateway = await asyncio.to_thread(start_gateway, sim.port, UNPINNED, False)
        try:
            target = f"127.0.0.1:{gateway.grpc_port}"
            transports: list[Transport] = [
                OpenAIDirect(sim.base_url),
                GrpcStreamTurn(target, 3),
                GrpcConverse(target, 3),
            ]
            results = [
                await run_load(
                    transport, 3, PACING, ramp_seconds=0.3, window_seconds=1.5, gateway_pid=gateway.pid
                )
                for transport in transports
            ]
        finally:
            await asyncio.to_thread(gateway.child.stop)
    baseline = results[0]
    for result in results:
        summary = report.Row(result, None if result is baseline else baseline).summary()
        assert summary["errors"] == 0, summary["error_kinds"]
        assert summary["lost_or_reordered_pieces"] == 0 and summary["incomplete_turns"] == 0
        assert summary["turns_completed"] >= 3 and summary["pieces_measured"] > 0
        assert report.healthy(summary)
        assert report.table_row(summary).count("|") == report.HEADER.splitlines()[0].count("|")
    assert results[1].gateway_cpu_seconds is not None and results[1].gateway_rss_during
