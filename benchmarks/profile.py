"""`make profile TRANSPORT=grpc`: where one row's server spends its CPU under load, reproducibly.

Starts the simulator and the row's server exactly as `make bench` does (same pinning, same pacing), runs
the load for `--seconds` while py-spy samples the server (`--nonblocking`, so sampling does not stop it),
and writes the collapsed stacks to `build/profile/<row>.txt` (open in speedscope or flamegraph.pl). It
prints the share of samples per package (of the innermost frame: where the time is spent) and the
functions with the most samples, inclusive and self.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

from benchmarks import loop, processes, rows
from benchmarks.load import RunResult, run_load
from benchmarks.pieces import Pacing

OUTPUT = processes.REPO / "build" / "profile"
FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
TOP = 25


def _py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise SystemExit("py-spy is not installed: `make .venv/.installed-dev` installs it")
    return found


def package_of(path: str) -> str:
    """The package a frame's file belongs to: `service`, `grpc`, `json`, `asyncio`, ..."""
    path = path.replace("\\", "/")
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    repo = str(processes.REPO) + "/"
    if path.startswith(repo):
        return path[len(repo) :].split("/", 1)[0]
    parts = path.split("/")
    if "lib" in parts:  # the standard library: python3.x/<module or package>
        after = parts[parts.index("lib") + 2 :]
        return after[0].removesuffix(".py") if after else path
    return parts[0].removesuffix(".py") or path


def summarize(collapsed: str) -> dict[str, Counter[str]]:
    """Samples per package (innermost frame), per function inclusive, and per function self."""
    packages: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        names = []
        for frame in frames:
            match = FRAME.match(frame)
            names.append(
                f"{match['function']} ({package_of(match['file'])})" if match else frame.strip() or "?"
            )
        leaf = FRAME.match(frames[-1])
        packages[package_of(leaf["file"]) if leaf else "?"] += count
        own[names[-1]] += count
        for name in set(names):
            inclusive[name] += count
    return {"packages": packages, "inclusive": inclusive, "self": own}


def _table(title: str, counts: Counter[str], total: int) -> str:
    lines = [f"{title} ({total} samples):"]
    lines += [f"  {count / total:6.1%}  {name}" for name, count in counts.most_common(TOP)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Profile one row under load and print where its server's time goes."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__)
    parser.add_argument("--row", default="grpc", help=f"one of {', '.join(rows.ROWS)}")
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--think-seconds", type=float, default=3.0)
    parser.add_argument("--seconds", type=float, default=30.0, help="sampled seconds")
    parser.add_argument("--rate", type=int, default=200, help="samples per second")
    parser.add_argument(
        "--native",
        action="store_true",
        help="also sample C frames (grpc's core, uvloop); pauses the server per sample, so it is slower",
    )
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    if args.row not in rows.ROWS or args.row == "direct":
        raise SystemExit(f"--row must be a served row: {', '.join(k for k in rows.ROWS if k != 'direct')}")
    py_spy = _py_spy()
    pacing = Pacing().validated()
    placement = processes.plan_placement()
    processes.pin_self(placement)
    args.output.mkdir(parents=True, exist_ok=True)
    out = args.output / f"{args.row}.txt"
    simulator, sim_port = processes.start_simulator(pacing, placement)
    try:
        setup = rows.Setup(sim_port, placement, edge=True)
        row = rows.ROWS[args.row]
        with rows.serve(row, setup) as served:
            assert served.pid is not None
            ramp = 3.0
            record = [py_spy, "record", "--pid", str(served.pid), "--format", "raw"]
            record.append("--native" if args.native else "--nonblocking")
            record += ["--rate", str(args.rate), "--duration", str(round(args.seconds)), "-o", str(out)]
            spy: list[subprocess.CompletedProcess[str]] = []

            def sample() -> None:
                # Started once the ramp is over, so the profile is of the steady state.
                threading.Event().wait(ramp)
                spy.append(subprocess.run(record, capture_output=True, text=True, check=False))

            async def measure() -> RunResult:
                # gRPC channels belong to the loop they are made in: make the transport inside it.
                return await run_load(
                    row.client(served, args.streams),
                    args.streams,
                    pacing,
                    ramp_seconds=ramp,
                    window_seconds=args.seconds + 1,
                    think_seconds=args.think_seconds,
                    gateway_pid=served.pid,
                    load_pids=(simulator.process.pid,),
                )

            sampler = threading.Thread(target=sample)
            sampler.start()
            result = loop.run(measure())
            sampler.join()
    finally:
        simulator.stop()
    if not spy or spy[0].returncode != 0 or not out.exists():
        detail = spy[0].stderr.strip() if spy else "py-spy did not run"
        raise SystemExit(f"py-spy failed: {detail}")
    cpu = (result.gateway_cpu_seconds or 0) / result.window_seconds
    print(
        f"{row.name} at {args.streams} streams (think {args.think_seconds:g} s): "
        f"{result.events / result.window_seconds:.0f} events/s, server core {cpu:.0%}, "
        f"errors {sum(result.errors.values())}; stacks in {out}"
    )
    counts = summarize(out.read_text())
    total = sum(counts["packages"].values()) or 1
    print(_table("innermost frame by package", counts["packages"], total))
    print(_table("functions, inclusive", counts["inclusive"], total))
    print(_table("functions, self", counts["self"], total))
    return 0


if __name__ == "__main__":
    sys.exit(main())
