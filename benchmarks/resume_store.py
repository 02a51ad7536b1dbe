"""`python -m benchmarks.resume_store`: what copying every SSE event to Redis costs the edge.

The same paced workload runs twice in one process, on the memory store (the baseline, today's path) and on
the Redis store against a local redis-server (tests/redis_server.py): `--turns` turns at once, each
appending `--events` events (three audio events of 4.3 KB, as a 3200-byte pcm16 piece is once base64'd,
then one 100-byte text event) every `--tick-ms`, each read by a local follower, as the SSE pump and its
client do. Reported: the edge's CPU per event (process time of this process, all its tasks: pumps,
followers, the Redis writer and redis-py) for both stores and their ratio, redis-server's own CPU per
event, the pipelines the writer sent (events per round trip), and how long an event takes to be readable
by another pod (a follower on a second store, its timestamp read back: p50 / p99). Writes
build/bench/resume_store.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

from adapters.resume import ResumeStore, TurnLog
from adapters.resume_redis import RedisResumeStore
from service.redis_client import connect
from tests.redis_server import RedisServer

OUT = Path("build/bench/resume_store.json")
AUDIO = b"event: audio.delta\nid: t:1\ndata: " + b"A" * 4300 + b"\n\n"
TEXT = b"event: text.delta\nid: t:1\ndata: " + b"T" * 100 + b"\n\n"


def _process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _turn(store: ResumeStore, index: int, events: int, tick: float, stamp: bool) -> None:
    log = await store.open(f"turn_bench_{index}_{id(store)}")
    reader = asyncio.create_task(_drain(log))
    for number in range(events):
        data = TEXT if number % 4 == 3 else AUDIO
        if stamp:
            data = time.perf_counter_ns().to_bytes(8, "big") + data[8:]
        log.append(data, time.perf_counter())
        await store.wait_for_room(log)
        if number % 4 == 3:
            await asyncio.sleep(tick)
    log.finish()
    await reader


async def _drain(log: TurnLog) -> None:
    async for _ in log.follow(0, 15.0):
        pass


async def _remote_latencies(store: RedisResumeStore, turn_id: str, out: list[float]) -> None:
    for _ in range(500):
        found = await store.find(turn_id, 0, None)
        if found is not None:
            break
        await asyncio.sleep(0.002)
    else:
        return
    async for data in found.follow(0, 15.0):
        if data:
            out.append((time.perf_counter_ns() - int.from_bytes(data[:8], "big")) / 1e6)


async def _run(
    store: ResumeStore, args: argparse.Namespace, remote: RedisResumeStore | None
) -> dict[str, Any]:
    latencies: list[float] = []
    watcher = None
    if remote is not None:
        watcher = asyncio.create_task(_remote_latencies(remote, f"turn_bench_0_{id(store)}", latencies))
    started_cpu, started = time.process_time(), time.perf_counter()
    await asyncio.gather(
        *(_turn(store, i, args.events, args.tick_ms / 1000, i == 0) for i in range(args.turns))
    )
    cpu, wall = time.process_time() - started_cpu, time.perf_counter() - started
    if watcher is not None:
        await asyncio.wait_for(watcher, 10)
    total = args.turns * args.events
    result = {
        "events": total,
        "wall_seconds": round(wall, 3),
        "cpu_us_per_event": round(cpu / total * 1e6, 2),
    }
    if latencies:
        latencies.sort()
        result["readable_elsewhere_ms_p50"] = round(statistics.median(latencies), 3)
        result["readable_elsewhere_ms_p99"] = round(latencies[int(0.99 * (len(latencies) - 1))], 3)
    return result


async def main(args: argparse.Namespace) -> dict[str, Any]:
    memory = await _run(ResumeStore(keep_seconds=60.0, max_bytes=1 << 30), args, None)
    server = RedisServer()
    server.start()
    try:
        assert server._process is not None
        pid = server._process.pid
        store = RedisResumeStore(connect(server.url, 1.0), keep_seconds=60.0, max_bytes=1 << 30)
        remote = RedisResumeStore(connect(server.url, 1.0), keep_seconds=60.0, max_bytes=1 << 30)
        pipelines = 0
        execute = store.client.pipeline

        def counted(*a: Any, **k: Any) -> Any:
            nonlocal pipelines
            pipelines += 1
            return execute(*a, **k)

        store.client.pipeline = counted  # type: ignore[method-assign]
        redis_cpu = _process_cpu(pid)
        on_redis = await _run(store, args, remote)
        await store.close()
        redis_cpu = _process_cpu(pid) - redis_cpu
        await remote.close()
    finally:
        server.stop()
    on_redis["redis_server_cpu_us_per_event"] = round(redis_cpu / on_redis["events"] * 1e6, 2)
    on_redis["events_per_pipeline"] = round(on_redis["events"] / max(1, pipelines), 1)
    return {
        "workload": vars(args),
        "memory": memory,
        "redis": on_redis,
        "cpu_ratio_redis_to_memory": round(on_redis["cpu_us_per_event"] / memory["cpu_us_per_event"], 2),
    }


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=50)
    parser.add_argument("--events", type=int, default=400)
    parser.add_argument("--tick-ms", type=float, default=20.0)
    report = asyncio.run(main(parser.parse_args()))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    cli()
