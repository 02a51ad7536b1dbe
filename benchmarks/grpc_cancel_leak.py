"""Native memory grpc.aio keeps per cancelled call: the part of the soak's memory Python cannot see.

grpcio's asyncio layer frees a batch's `grpc_op` array only when the task awaiting the batch consumes its
result. A batch that fails (a read on a call the peer cancelled) or whose awaiting task is cancelled keeps
its array for good (grpc/grpc#43360, open for grpcio 1.83-1.85). The gateway hits both on every cancel:
the edge cancels its call to the core, the core's Converse reader is cancelled mid-read. tracemalloc and
the collector see none of it; glibc's bytes in use do.

    python -m benchmarks.grpc_cancel_leak [--calls 20000]

A server-streaming call is opened and cancelled `--calls` times per pattern over loopback (after a warm-up
of 500), and glibc malloc's bytes in use (mallinfo2) are compared before and after: bytes kept per call.
`re-raised` is the server handler that re-raises CancelledError (what the gateway's servicer does),
`returned` one that returns normally after the cancel, `read in flight` a client that cancels the task
awaiting a read before it cancels the call, `read settled` the same read ended the edge's way
(adapters/call_reads.py: the call cancelled first, the read let finish).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from adapters.call_reads import settle
from service.memory_report import malloc_stats

WARM_UP_CALLS = 500


class _Streams(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    """Health.Watch as an endless server stream; `reraise` says how the handler meets a cancel."""

    def __init__(self, reraise: bool) -> None:
        self.reraise = reraise

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: Any
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        try:
            while True:
                yield health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)
                await asyncio.sleep(0.001)
        except asyncio.CancelledError:
            if self.reraise:
                raise


def _in_use() -> int:
    gc.collect()
    stats = malloc_stats()
    if stats is None:
        raise SystemExit("needs glibc 2.33+ (mallinfo2)")
    return stats["in_use_bytes"]


async def kept_per_call(calls: int, reraise: bool, read_in_flight: str) -> float:
    """Bytes of malloc in use after `calls` cancelled calls, per call. `read_in_flight`: "" (none),
    "cancelled" (its awaiting task cancelled, then the call) or "settled" (call_reads.settle)."""
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(_Streams(reraise), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)

            async def one() -> None:
                call = stub.Watch(health_pb2.HealthCheckRequest())
                await call.read()
                if read_in_flight:
                    read = asyncio.ensure_future(call.read())
                    await asyncio.sleep(0)
                    if read_in_flight == "settled":
                        await settle(call, read)
                    read.cancel()
                    await asyncio.gather(read, return_exceptions=True)
                call.cancel()
                await asyncio.sleep(0)

            for _ in range(WARM_UP_CALLS):
                await one()
            await asyncio.sleep(0.5)
            before = _in_use()
            for _ in range(calls):
                await one()
            await asyncio.sleep(1.0)  # cancels reach the server
            after = _in_use()
    finally:
        await server.stop(None)
    return (after - before) / calls


async def run(calls: int) -> dict[str, Any]:
    patterns = {
        "re-raised": (True, ""),
        "returned": (False, ""),
        "read in flight": (True, "cancelled"),
        "read settled": (True, "settled"),
    }
    kept = {
        name: round(await kept_per_call(calls, reraise, in_flight), 1)
        for name, (reraise, in_flight) in patterns.items()
    }
    return {"grpcio": grpc.__version__, "calls_per_pattern": calls, "bytes_kept_per_cancelled_call": kept}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=20_000)
    print(json.dumps(asyncio.run(run(parser.parse_args().calls)), indent=2))


if __name__ == "__main__":
    main()
