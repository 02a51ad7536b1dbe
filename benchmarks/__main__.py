"""`python -m benchmarks` (`make bench`): every row at one size, a stress row, then capacity by search.

1. the simulator starts on the load cores and this process pins itself there too;
2. idle memory: a fresh gateway, N idle Converse streams, RSS before and after;
3. the table: every row (direct, no-logic relay, each gateway transport, LiteLLM with --litellm) at
   `--streams` users with think time, then direct, relay and gRPC StreamTurn at `--stress-streams` users
   with turns back to back; `--repeats` times, interleaved, each run on a fresh server process;
4. capacity: for each `--capacity` row, bisection on the number of users (`capacity.search`);
5. `latest.json` and `latest.md` in `--output` (default `build/bench/`, untracked: a committed report is
   a deliberate copy).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shlex
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from benchmarks import capacity, loop, processes, report, rows
from benchmarks.idle import idle_memory
from benchmarks.load import RunResult, run_load
from benchmarks.pieces import Pacing
from benchmarks.simulator import pacing_arguments, pacing_from

REPO = Path(__file__).resolve().parent.parent
OUTPUT = REPO / "build" / "bench"
DEFAULT_ROWS = ("direct", "relay", "grpc", "converse", "sse", "websocket", "compat")
STRESS_ROWS = ("direct", "relay", "grpc")
DEFAULT_CAPACITY = ("relay", "grpc", "sse", "websocket", "compat")
CAPACITY_TARGET_MS = 5.0


@dataclass
class Bench:
    """One benchmark: its settings, its simulator, and the direct runs measured so far."""

    pacing: Pacing
    setup: rows.Setup
    sim_pid: int
    ramp: float
    log: Callable[[str], None]
    compare: Path | None = None
    directs: dict[tuple[int, float, float], RunResult] = field(default_factory=dict)

    def name(self, key: str) -> str:
        """How a row is named in the table; `key@compare` is a gateway row run from the `--compare` tree."""
        base, _, other = key.partition("@")
        name = rows.ROWS[base].name
        return f"{name} [{self.compare}]" if other and self.compare else name

    def run(self, key: str, streams: int, think: float, window: float) -> RunResult:
        """One run of one row on a fresh server process."""
        base, _, other = key.partition("@")
        row = rows.ROWS[base]
        setup = self.setup
        if other and self.compare:
            setup = replace(setup, gateway_repo=self.compare)
        started = time.monotonic()
        with rows.serve(row, setup) as served:

            async def measure() -> RunResult:
                # gRPC channels belong to the loop they are made in: make the transport inside it.
                return await run_load(
                    row.client(served, streams),
                    streams,
                    self.pacing,
                    ramp_seconds=self.ramp,
                    window_seconds=window,
                    think_seconds=think,
                    gateway_pid=served.pid,
                    load_pids=(self.sim_pid,),
                    metrics_url=served.metrics_url,
                )

            result = loop.run(measure())
        if key == "direct":
            self.directs[streams, think, window] = result
        summary = report.Row(result, None).summary()
        self.log(
            f"{self.name(key):>26} x{streams:<4} think {think:g} s: active {result.mean_active_streams:6.1f} "
            f"p99 {summary['latency_ms']['p99'] or 0:8.2f} ms "
            f"cpu {summary.get('gateway_cpu_us_per_event') or 0:6.1f} µs/event "
            f"core {summary.get('gateway_cpu_fraction', 0):4.0%} "
            f"client {result.client_cpu_fraction or 0:4.0%} errors {summary['errors']} "
            f"bad {summary['lost_or_reordered_pieces'] + summary['incomplete_turns']} "
            f"({time.monotonic() - started:.0f} s)"
        )
        return result

    def direct(self, streams: int, think: float, window: float) -> RunResult:
        """The direct run at this size and load model (measured once per benchmark for capacity steps)."""
        return self.directs.get((streams, think, window)) or self.run("direct", streams, think, window)

    def table(self, keys: list[str], streams: int, think: float, window: float, repeats: int) -> list[Any]:
        """Every row `repeats` times, interleaved, each gateway run against the direct run of its repeat."""
        if self.compare:
            keys = [k for key in keys for k in ((key, f"{key}@compare") if _gateway(key) else (key,))]
        summaries: dict[str, list[dict[str, Any]]] = {key: [] for key in keys}
        for _ in range(repeats):
            direct = self.run("direct", streams, think, window)
            summaries["direct"].append(report.Row(direct, None).summary())
            for key in keys:
                if key != "direct":
                    summaries[key].append(report.Row(self.run(key, streams, think, window), direct).summary())
        return [report.aggregate(key, self.name(key), summaries[key]) for key in keys]

    def capacity(self, key: str, args: argparse.Namespace) -> capacity.Capacity:
        """Bisect the number of users `key` holds with the think-time load model."""

        def check(streams: int) -> tuple[capacity.Verdict, str]:
            base = self.direct(streams, args.think_seconds, args.capacity_window)
            result = self.run(key, streams, args.think_seconds, args.capacity_window)
            return verdict(report.Row(result, base).summary())

        return capacity.search(
            check,
            start=args.capacity_start,
            limit=args.capacity_limit,
            max_steps=args.capacity_steps,
        )


def _gateway(key: str) -> bool:
    return rows.ROWS[key].server == "gateway"


def verdict(summary: dict[str, Any]) -> tuple[capacity.Verdict, str]:
    """Whether a run holds the capacity criteria, and the number that decided it."""
    core = summary.get("gateway_cpu_fraction") or 0.0
    active = f"{summary['mean_active_streams']:.0f} active"
    if not report.healthy(summary):
        bad = summary["lost_or_reordered_pieces"] + summary["incomplete_turns"]
        return "fail", f"{summary['errors']} errors, {bad} lost/reordered, {active}"
    if core >= report.SATURATED:
        return "fail", f"server core {core:.0%}, {active}"
    if summary.get("added_refused"):
        return "unmeasurable", summary["added_refused"]
    p99 = summary["added_latency_ms"]["p99"]
    if p99 is None or p99 >= CAPACITY_TARGET_MS:
        return "fail", f"p99 added {p99:+.1f} ms, core {core:.0%}, {active}"
    return "pass", f"p99 added {p99:+.1f} ms, core {core:.0%}, {active}"


def _keys(text: str, default: tuple[str, ...]) -> list[str]:
    keys = [key.strip() for key in text.split(",") if key.strip()] if text else list(default)
    if keys == ["none"]:
        return []
    unknown = [key for key in keys if key not in rows.ROWS]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; known: {', '.join(rows.ROWS)}")
    return keys


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The command line; `--quick` shrinks windows, repeats and the search for a smoke check."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="10 s windows, one repeat, 4 capacity steps")
    parser.add_argument("--streams", type=int, default=50, help="users of the main table")
    parser.add_argument("--stress-streams", type=int, default=200, help="users of the zero-pause stress rows")
    parser.add_argument("--think-seconds", type=float, default=3.0, help="mean pause between turns")
    parser.add_argument("--window", type=float, default=30.0, help="seconds measured per table run")
    parser.add_argument("--ramp", type=float, default=3.0, help="seconds over which users start")
    parser.add_argument("--repeats", type=int, default=3, help="runs per table row (interleaved)")
    parser.add_argument("--rows", default="", help=f"table rows (default {','.join(DEFAULT_ROWS)})")
    parser.add_argument("--capacity", default="", help=f"rows to search ({','.join(DEFAULT_CAPACITY)}; none)")
    parser.add_argument("--capacity-window", type=float, default=60.0, help="seconds per search step")
    parser.add_argument("--capacity-start", type=int, default=100)
    parser.add_argument("--capacity-limit", type=int, default=1600)
    parser.add_argument("--capacity-steps", type=int, default=6)
    parser.add_argument("--idle-streams", type=int, default=300)
    parser.add_argument("--litellm", type=Path, help="LiteLLM's CLI: adds its row (make bench-peers)")
    parser.add_argument("--output", type=Path, default=OUTPUT, help="directory for latest.json/.md")
    parser.add_argument(
        "--compare",
        type=Path,
        help="another checkout (e.g. `git worktree add /tmp/before HEAD~1`): its gateway runs beside this "
        "one's in every gateway row, interleaved, for before/after pairs",
    )
    pacing_arguments(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.window, args.repeats, args.capacity_window, args.capacity_steps = 10.0, 1, 10.0, 4
    args.row_keys = _keys(args.rows, DEFAULT_ROWS)
    if args.litellm and "litellm" not in args.row_keys:
        args.row_keys.append("litellm")
    if "direct" not in args.row_keys:
        args.row_keys.insert(0, "direct")
    args.capacity_keys = _keys(args.capacity, DEFAULT_CAPACITY)
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write the report."""
    args = parse(argv)
    # A SIGTERM unwinds like Ctrl-C, so the simulator and the server of the run in progress are stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    pacing = pacing_from(args)
    placement = processes.plan_placement()
    processes.pin_self(placement)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    notes: list[str] = []
    if not placement.pinned:
        notes.append("not pinned: the server shares its core with the load side, so CPU shares mix")
    log(f"{placement.describe()}; {pacing_text(pacing)}")
    simulator, sim_port = processes.start_simulator(pacing, placement)
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    begin = time.monotonic()
    setup = rows.Setup(sim_port, placement, edge=True, litellm=args.litellm)
    try:
        compare = args.compare.resolve() if args.compare else None
        bench = Bench(pacing, setup, simulator.process.pid, args.ramp, log, compare)
        gateway_row = rows.ROWS["grpc"]
        with rows.serve(gateway_row, setup) as served:
            idle = loop.run(idle_memory(served.grpc_target, served.pid, args.idle_streams))
        log(f"idle memory: {idle['kib_per_stream']:.1f} KiB per open Converse stream")
        table = bench.table(args.row_keys, args.streams, args.think_seconds, args.window, args.repeats)
        stress = [key for key in STRESS_ROWS if key in args.row_keys]
        if args.stress_streams and len(stress) > 1:
            table += bench.table(stress, args.stress_streams, 0.0, args.window, args.repeats)
        capacities = {rows.ROWS[key].name: bench.capacity(key, args).as_json() for key in args.capacity_keys}
    finally:
        simulator.stop()
    result = {
        "command": command_line(argv),
        "started": started,
        "duration_seconds": round(time.monotonic() - begin, 1),
        "machine": machine(),
        "placement": placement.describe(),
        "pacing": pacing_dict(pacing),
        "pacing_text": pacing_text(pacing),
        "streams": args.streams,
        "window_seconds": args.window,
        "ramp_seconds": args.ramp,
        "repeats": args.repeats,
        "think_text": (
            f"mean {args.think_seconds:g} s (uniform ±50%) in the table and capacity rows, "
            f"none in the stress rows ({args.stress_streams} streams)"
        ),
        "idle_memory": idle,
        "rows": table,
        "capacity": capacities,
        "capacity_target_ms": CAPACITY_TARGET_MS,
        "capacity_window_seconds": args.capacity_window,
        "notes": notes,
    }
    json_path, md_path = report.write(result, args.output)
    print(report.markdown(result))
    log(f"wrote {json_path} and {md_path} in {result['duration_seconds']:.0f} s")
    return 0


def command_line(argv: list[str] | None) -> str:
    """How this run was started, to reproduce it."""
    arguments = argv if argv is not None else sys.argv[1:]
    prefix = "make bench" if os.environ.get("MAKELEVEL") else "python -m benchmarks"
    return shlex.join([*prefix.split(), *arguments]) if arguments or prefix != "make bench" else prefix


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
        "load_average": os.getloadavg(),
    }


if __name__ == "__main__":
    sys.exit(main())
