"""`python -m benchmarks.edge_memory` (part of `make bench`): what the edge's resume buffers cost in memory.

An edge and a core (`audiochat serve --role ...`, the offline voice) run as the Helm chart runs them. SSE
turns are read to their end until the edge's resume buffers are full (AUDIOCHAT_RESUME_BUFFER_BYTES, kept
an hour so none expires), then the edge's resident memory (VmRSS from /proc) is compared with the same
process idle, in the same run. The chart sizes the cap from the memory limit with this ratio
(helm/audiochat: cap = (limit - memoryHeadroom) * 4/5): buffers take more memory than the bytes they count
(per-event Python objects and bookkeeping, freed memory the allocator keeps). Writes
benchmarks/results/edge_memory.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.processes import free_port, sample, wait_ready

RESULTS = Path(__file__).resolve().parent / "results"
MIB = 1024 * 1024
START_TIMEOUT_SECONDS = 60.0
# Bytes of SSE events one offline-voice turn of the prompt below sends (about 0.55 MiB): enough turns to
# send the cap twice over, so eviction has run and the buffers sit at the cap.
TURN_BYTES_ESTIMATE = 550 * 1024
PROMPT = "Tell me a long story about the number {n}, the sea, the wind and the mountains, please."


async def fill(client: httpx.AsyncClient, turns: int, concurrency: int) -> int:
    """Run `turns` SSE turns to their end, `concurrency` at a time; the bytes of events received."""
    received = 0
    slots = asyncio.Semaphore(concurrency)

    async def one(number: int) -> None:
        nonlocal received
        async with slots, client.stream("POST", "/v1/turns", json={"text": PROMPT.format(n=number)}) as reply:
            reply.raise_for_status()
            async for chunk in reply.aiter_bytes():
                received += len(chunk)

    await asyncio.gather(*(one(number) for number in range(turns)))
    return received


async def load(http_port: int, edge_pid: int, cap_bytes: int, concurrency: int) -> dict[str, Any]:
    """Idle RSS, then enough turns to fill the buffers, then RSS again."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}", timeout=120) as client:
        await wait_ready(str(client.base_url), START_TIMEOUT_SECONDS)
        idle = sample(edge_pid).rss_bytes
        turns = 2 * cap_bytes // TURN_BYTES_ESTIMATE + 1
        started = time.monotonic()
        received = await fill(client, turns, concurrency)
        full = sample(edge_pid).rss_bytes
    return {
        "cap_mib": cap_bytes / MIB,
        "turns": turns,
        "concurrency": concurrency,
        "events_mib": round(received / MIB, 1),
        "seconds": round(time.monotonic() - started, 1),
        "idle_rss_mib": round(idle / MIB, 1),
        "full_rss_mib": round(full / MIB, 1),
        # What the buffers added to the process, per byte they count against the cap.
        "ratio": round((full - idle) / cap_bytes, 3),
    }


def measure(cap_bytes: int, concurrency: int) -> dict[str, Any]:
    """One row: a fresh core and edge, the edge's buffers capped at `cap_bytes`."""
    grpc, http, metrics = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "AUDIOCHAT_GRPC_PORT": str(grpc),
        "AUDIOCHAT_METRICS_PORT": str(metrics),
        "AUDIOCHAT_HTTP_PORT": str(http),
        "AUDIOCHAT_LOG_LEVEL": "warning",
        "AUDIOCHAT_RESUME_BUFFER_BYTES": str(cap_bytes),
        "AUDIOCHAT_RESUME_SECONDS": "3600",
    }
    env.pop("OPENAI_API_KEY", None)  # the offline voice
    serve = [sys.executable, "-m", "service.cli", "serve", "--role"]
    core = subprocess.Popen([*serve, "core"], env=env, stderr=subprocess.DEVNULL)
    edge_role = [*serve, "edge", "--target", f"127.0.0.1:{grpc}"]
    edge = subprocess.Popen(edge_role, env=env, stderr=subprocess.DEVNULL)
    try:
        return asyncio.run(load(http, edge.pid, cap_bytes, concurrency))
    finally:
        for process in (edge, core):
            process.kill()
            process.wait()


def report(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| cap (MiB) | turns | events sent (MiB) | idle edge RSS (MiB) | full buffers RSS (MiB) "
        "| (full - idle) / cap |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['cap_mib']:g} | {row['turns']} | {row['events_mib']} | {row['idle_rss_mib']} "
            f"| {row['full_rss_mib']} | {row['ratio']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--caps-mib", default="128,256", help="comma-separated caps to measure, in MiB")
    parser.add_argument("--concurrency", type=int, default=8, help="SSE turns at once")
    args = parser.parse_args()
    rows = [measure(int(cap) * MIB, args.concurrency) for cap in args.caps_mib.split(",")]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "edge_memory.json").write_text(json.dumps(rows, indent=2) + "\n")
    table = report(rows)
    (RESULTS / "edge_memory.md").write_text(table)
    print(table, end="")


if __name__ == "__main__":
    main()
