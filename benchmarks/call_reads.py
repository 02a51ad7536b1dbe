"""What reading the core's stream through adapters/call_reads.py costs the edge, beside a bare read.

    python -m benchmarks.call_reads [--messages 20000] [--repeats 5]

The edge reads every event of the core's stream with `call_reads.read` (the read in its own task, so a
cancelled reader can let it finish: grpc/grpc#43360). Here a server in another process streams
`--messages` responses of 3,200 bytes (an audio piece) per call; this process reads them with a bare
`call.read()` and with `read(call)`, alternating, `--repeats` times each, on uvloop. Printed: this
process's CPU per read (median, µs) for each, and their ratio. Not part of `make bench` (about 20 s).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import uvloop

from adapters.call_reads import read

PIECE = b"\x01" * 3200
METHOD = "/bench.Stream/Pieces"


def _identity(data: bytes) -> bytes:
    return data


async def _serve(messages: int) -> None:
    async def pieces(request: bytes, context: Any) -> AsyncIterator[bytes]:
        for _ in range(messages):
            yield PIECE

    server = grpc.aio.server()
    handler = grpc.unary_stream_rpc_method_handler(pieces, _identity, _identity)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("bench.Stream", {"Pieces": handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


async def _cpu_per_read(channel: grpc.aio.Channel, wrapped: bool) -> float:
    """This process's CPU seconds per message read, over one call."""
    pieces = channel.unary_stream(METHOD, request_serializer=_identity, response_deserializer=_identity)
    call = pieces(b"")
    count = 0
    started = time.process_time()
    if wrapped:
        while (await read(call)) is not grpc.aio.EOF:
            count += 1
    else:
        while (await call.read()) is not grpc.aio.EOF:
            count += 1
    return (time.process_time() - started) / count


async def run(port: int, messages: int, repeats: int) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        await _cpu_per_read(channel, wrapped=False)  # warm-up
        bare, wrapped = [], []
        for _ in range(repeats):
            bare.append(await _cpu_per_read(channel, wrapped=False))
            wrapped.append(await _cpu_per_read(channel, wrapped=True))
    bare_us, wrapped_us = statistics.median(bare) * 1e6, statistics.median(wrapped) * 1e6
    return {
        "messages_per_call": messages,
        "repeats": repeats,
        "cpu_us_per_read_bare": round(bare_us, 1),
        "cpu_us_per_read_call_reads": round(wrapped_us, 1),
        "ratio": round(wrapped_us / bare_us, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        uvloop.run(_serve(args.messages))
        return
    command = [sys.executable, "-m", "benchmarks.call_reads", "--serve", "--messages", str(args.messages)]
    server = subprocess.Popen(command, stdout=subprocess.PIPE)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        print(json.dumps(uvloop.run(run(port, args.messages, args.repeats)), indent=2))
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
