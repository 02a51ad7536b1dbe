"""`python -m benchmarks` (`make bench`): every transport and the baseline at one concurrency, then a sweep.

1. the simulator starts on the load cores and this process pins itself there too;
2. idle memory: a fresh gateway, N idle Converse streams, RSS before and after;
3. each transport, then the baseline, at N streams, each gateway run on a fresh `audiochat serve`;
4. per transport family, the largest size on a grid whose p99 added latency stays under its target;
5. `benchmarks/results/latest.json` and `latest.md`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import processes, report
from benchmarks.clients import GrpcConverse, GrpcStreamTurn, OpenAIDirect
from benchmarks.edge_clients import EDGE_TRANSPORTS, edge_available
from benchmarks.idle import idle_memory
from benchmarks.load import RunResult, Transport, run_load
from benchmarks.pieces import Pacing
from benchmarks.simulator import pacing_arguments, pacing_from

RESULTS = Path(__file__).resolve().parent / "results"
SWEEP_GRID = (10, 25, 50, 100, 150, 200, 300, 400, 600, 800)
# Per transport family: the p99 added latency (ms) the gateway must stay under.
TARGETS_MS = {"grpc StreamTurn": 5.0, "sse": 10.0, "websocket": 10.0}
BASELINE = "baseline"

Factory = Callable[[str, int, processes.Gateway | None], Transport]


def _factories() -> dict[str, Factory]:
    grpc: dict[str, Factory] = {
        BASELINE: lambda sim_url, n, gw: OpenAIDirect(sim_url),
        "grpc StreamTurn": lambda sim_url, n, gw: GrpcStreamTurn(f"127.0.0.1:{_grpc(gw)}", n),
        "grpc Converse": lambda sim_url, n, gw: GrpcConverse(f"127.0.0.1:{_grpc(gw)}", n),
    }
    return {**grpc, **EDGE_TRANSPORTS}


def _grpc(gateway: processes.Gateway | None) -> int:
    assert gateway is not None
    return gateway.grpc_port


@dataclass
class Bench:
    """One benchmark: its settings, its simulator, and every run so far."""

    pacing: Pacing
    streams: int
    window: float
    ramp: float
    placement: processes.Placement
    sim_port: int
    sim_pid: int
    edge: bool
    log: Callable[[str], None]
    baselines: dict[int, RunResult] = field(default_factory=dict)

    @property
    def sim_url(self) -> str:
        return f"http://127.0.0.1:{self.sim_port}/v1"

    @contextmanager
    def gateway(self) -> Iterator[processes.Gateway]:
        gateway = processes.start_gateway(self.sim_port, self.placement, edge=self.edge)
        try:
            yield gateway
        finally:
            gateway.child.stop()

    def run(self, name: str, streams: int, window: float | None = None) -> RunResult:
        """One run on a fresh gateway (none for the baseline)."""
        window = window or self.window
        factory = _factories()[name]
        started = time.monotonic()
        with contextlib.ExitStack() as stack:
            gateway = None if name == BASELINE else stack.enter_context(self.gateway())

            async def measure() -> RunResult:
                # gRPC channels belong to the loop they are made in: make the transport inside it.
                return await run_load(
                    factory(self.sim_url, streams, gateway),
                    streams,
                    self.pacing,
                    ramp_seconds=self.ramp,
                    window_seconds=window,
                    gateway_pid=gateway.pid if gateway else None,
                    load_pids=(self.sim_pid,),
                )

            result = asyncio.run(measure())
        if name == BASELINE:
            self.baselines[streams] = result
        summary = report.Row(result, self.baselines.get(streams)).summary()
        added = summary.get("added_latency_ms", {}).get("p99")
        self.log(
            f"{name:>30} x{streams:<4} p50 {summary['latency_ms']['p50'] or 0:7.2f} ms "
            f"p99 {summary['latency_ms']['p99'] or 0:8.2f} ms "
            f"added p99 {added if added is not None else 0:+8.2f} ms "
            f"cpu {summary.get('gateway_cpu_fraction', 0):4.0%} load {result.load_cpu_fraction or 0:4.0%} "
            f"errors {summary['errors']} bad {summary['lost_or_reordered_pieces']} "
            f"({time.monotonic() - started:.0f} s)"
        )
        return result

    def baseline(self, streams: int, window: float | None = None) -> RunResult:
        """The baseline at this size, measured once per benchmark."""
        return self.baselines.get(streams) or self.run(BASELINE, streams, window)


def sweep(
    bench: Bench, name: str, target_ms: float, window: float, max_steps: int, start: int
) -> dict[str, Any]:
    """Walk the grid from `start`: up while under the target, down while over."""
    tried: list[dict[str, Any]] = []
    grid = sorted({*SWEEP_GRID, start})
    index = grid.index(start)
    direction = 0
    largest = 0
    for _ in range(max_steps):
        streams = grid[index]
        base = bench.baseline(streams, window)
        summary = report.Row(bench.run(name, streams, window), base).summary()
        added = summary["added_latency_ms"]["p99"]
        ok = report.healthy(summary) and added is not None and added < target_ms
        tried.append({"streams": streams, "added_p99_ms": added, "healthy": report.healthy(summary)})
        if ok:
            largest = max(largest, streams)
        step = 1 if ok else -1
        if direction and step != direction:
            break  # crossed the boundary
        direction = step
        index += step
        if not 0 <= index < len(grid) or (ok and largest == grid[-1]):
            break
    tried.sort(key=lambda step: step["streams"])
    return {"target_ms": target_ms, "largest": largest, "tried": tried}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write the report."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--streams", type=int, default=300, help="concurrent streams of the main table")
    parser.add_argument("--window", type=float, default=8.0, help="seconds measured per run")
    parser.add_argument("--ramp", type=float, default=2.0, help="seconds over which users start")
    parser.add_argument("--sweep-window", type=float, default=5.0, help="seconds measured per sweep step")
    parser.add_argument("--sweep-steps", type=int, default=4, help="at most this many sizes per family")
    parser.add_argument("--sweep-from", type=int, default=50, help="the sweep's first size")
    parser.add_argument("--no-sweep", action="store_true", help="only the main table")
    parser.add_argument("--transports", default="", help="comma-separated subset (default: all available)")
    parser.add_argument("--output", type=Path, default=RESULTS, help="directory for latest.json/.md")
    pacing_arguments(parser)
    args = parser.parse_args(argv)
    pacing = pacing_from(args)
    placement = processes.plan_placement()
    processes.pin_self(placement)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    notes: list[str] = []
    edge, why_not = edge_available()
    if not edge:
        notes.append(f"SSE, WebSocket and OpenAI-compatible transports skipped: {why_not}")
        log(f"note: {notes[-1]}")
    names = [name for name in _factories() if name != BASELINE and (edge or name.startswith("grpc"))]
    if args.transports:
        wanted = [name.strip() for name in args.transports.split(",")]
        names = [name for name in names if name in wanted]
    log(f"{placement.describe()}; {pacing_text(pacing)}")
    simulator, sim_port = processes.start_simulator(pacing, placement)
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    begin = time.monotonic()
    try:
        bench = Bench(
            pacing,
            args.streams,
            args.window,
            args.ramp,
            placement,
            sim_port,
            simulator.process.pid,
            edge,
            log,
        )
        with bench.gateway() as gateway:
            idle = asyncio.run(idle_memory(gateway, args.streams))
        log(f"idle memory: {idle['kib_per_stream']:.1f} KiB per open Converse stream")
        base = bench.baseline(args.streams)
        runs = [report.Row(base, None).summary()]
        for name in names:
            runs.append(report.Row(bench.run(name, args.streams), base).summary())
        sweeps: dict[str, Any] = {}
        if not args.no_sweep:
            for name, target in TARGETS_MS.items():
                if name in names:
                    sweeps[name] = sweep(
                        bench, name, target, args.sweep_window, args.sweep_steps, args.sweep_from
                    )
    finally:
        simulator.stop()
    result = {
        "command": "make bench"
        if os.environ.get("MAKELEVEL")
        else shlex.join(["python", "-m", "benchmarks", *(argv or sys.argv[1:])]),
        "started": started,
        "duration_seconds": round(time.monotonic() - begin, 1),
        "machine": machine(),
        "placement": placement.describe(),
        "pacing": pacing_dict(pacing),
        "pacing_text": pacing_text(pacing),
        "streams": args.streams,
        "window_seconds": args.window,
        "ramp_seconds": args.ramp,
        "idle_memory": idle,
        "runs": runs,
        "largest_streams_under_target": sweeps,
        "notes": notes,
    }
    json_path, md_path = report.write(result, args.output)
    print(report.markdown(result))
    log(f"wrote {json_path} and {md_path} in {result['duration_seconds']:.0f} s")
    return 0


def pacing_dict(pacing: Pacing) -> dict[str, Any]:
    """The pacing and what follows from it."""
    return {
        "first_chunk_seconds": pacing.first_chunk_seconds,
        "audio_pieces_per_second": pacing.audio_pieces_per_second,
        "bytes_per_piece": pacing.piece_bytes,
        "transcript_pieces_per_second": pacing.transcript_pieces_per_second,
        "speech_seconds": pacing.speech_seconds,
        "events_per_second_per_stream": pacing.audio_pieces_per_second + pacing.transcript_pieces_per_second,
    }


def pacing_text(pacing: Pacing) -> str:
    """The pacing in one phrase."""
    return (
        f"first chunk after {pacing.first_chunk_seconds * 1000:.0f} ms, then {pacing.speech_seconds:g} s of "
        f"speech as {pacing.audio_pieces_per_second:g} audio pieces/s of {pacing.piece_bytes} bytes and "
        f"{pacing.transcript_pieces_per_second:g} transcript pieces/s per stream"
    )


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "system": platform.platform(),
    }


if __name__ == "__main__":
    sys.exit(main())
