"""Idle memory: what an open conversation that says nothing costs the gateway."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from audiochat.v1 import audiochat_pb2 as pb
from audiochat.v1 import audiochat_pb2_grpc as pb_grpc
from benchmarks.processes import sample

WARM_UP_STREAMS = 10
SETTLE_SECONDS = 1.0
KIB = 1024


async def _open(stub: pb_grpc.AudioChatServiceAsyncStub) -> Any:
    call = stub.Converse()
    await call.write(pb.ConverseRequest(config=pb.ConverseConfig(turn=pb.TurnConfig())))
    response = await call.read()
    if not isinstance(response, pb.ConverseResponse) or not response.HasField("started"):
        raise RuntimeError("the gateway did not start a conversation")
    return call


async def idle_memory(target: str, pid: int | None, streams: int) -> dict[str, Any]:
    """Open `streams` Converse calls (config sent, no turn) and divide the RSS growth among them.

    A few calls are opened and closed first, so one-time allocations (the first call's imports, caches
    and buffers) are not charged to the streams being measured.
    """
    assert pid is not None
    async with grpc.aio.insecure_channel(target) as channel:
        stub: Any = pb_grpc.AudioChatServiceStub(channel)
        warm = [await _open(stub) for _ in range(WARM_UP_STREAMS)]
        for call in warm:
            call.cancel()
        await asyncio.sleep(SETTLE_SECONDS)
        before = sample(pid).rss_bytes
        calls = await asyncio.gather(*(_open(stub) for _ in range(streams)))
        await asyncio.sleep(SETTLE_SECONDS)
        after = sample(pid).rss_bytes
        for call in calls:
            call.cancel()
    return {
        "streams": streams,
        "rss_before_mib": before / KIB / KIB,
        "rss_after_mib": after / KIB / KIB,
        "kib_per_stream": (after - before) / KIB / streams,
    }
