"""Which process grows: one transport's soak with the core and the edge in two processes, memory by process.

    python -m tests.soak_split [--minutes 5] [--transport compat] [--workers 12] [--edge-env NAME=VALUE]
        [--fault-rate 0.08] [--cancel-rate 0.04] [--pause-rate 0.04]

`make soak` runs both roles in one process, so its memory figures cannot say which side holds what. Here
the core (`AUDIOCHAT_ROLE=core`) and the edge (`AUDIOCHAT_ROLE=edge`, against the core) each write memory
reports (service/memory_report.py), sampled by the soak's own `MemoryWatch` every `--every` seconds; the
JSON printed at the end gives each process's figures as `make soak` gives the gateway's (RSS, glibc
malloc and Python's allocator in use, slopes over the second half, `flat`). `--edge-env` adds variables
to the edge alone (an LD_PRELOAD'ed heaptrack, another event loop); the three rates set how many turns
get each kind of fault (`make soak`'s by default), so one kind can be run alone: `--fault-rate 0
--pause-rate 0 --cancel-rate 0.3` is clients that leave mid-answer and nothing else.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.processes import wait_ready
from tests.fault_upstream import FaultUpstream
from tests.soak import SOAK_RATES, TRANSPORTS, Rates, Soak, add_scripts, free_port, start_gateway
from tests.soak_memory import MemoryWatch


async def run(
    minutes: float,
    transport: str,
    workers: int,
    every: float,
    edge_env: dict[str, str],
    rates: Rates = SOAK_RATES,
) -> Any:
    async with FaultUpstream() as upstream:
        add_scripts(upstream)
        reports = Path(tempfile.mkdtemp(prefix="soak-split-"))
        grpc_port, http_port = free_port(), free_port()
        core_env = {"AUDIOCHAT_ROLE": "core", "AUDIOCHAT_MEMORY_REPORT": str(reports / "core.json")}
        core = start_gateway(upstream.base_url, grpc_port, free_port(), free_port(), core_env)
        edge_env = {
            "AUDIOCHAT_ROLE": "edge",
            "AUDIOCHAT_CORE_TARGET": f"127.0.0.1:{grpc_port}",
            "AUDIOCHAT_MEMORY_REPORT": str(reports / "edge.json"),
            **edge_env,
        }
        edge = start_gateway(upstream.base_url, free_port(), http_port, free_port(), edge_env)
        try:
            await wait_ready(f"http://127.0.0.1:{http_port}", timeout_seconds=180)
            watches = {
                name: MemoryWatch(
                    process.pid, every=every, report_path=reports / f"{name}.json", report_every=every
                )
                for name, process in (("core", core), ("edge", edge))
            }
            samplers = [asyncio.create_task(watch.run()) for watch in watches.values()]
            soak = Soak(upstream, grpc_port, http_port, minutes, 0, rates)
            await asyncio.gather(*(soak.worker(transport, 1000 + n) for n in range(workers)))
            elapsed = time.monotonic() - soak.started
            for sampler in samplers:
                sampler.cancel()
        finally:
            for process in (edge, core):
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=60)
    return {
        "minutes": round(elapsed / 60, 2),
        "transport": transport,
        "rates": vars(rates),
        "turns": dict(sorted(soak.tally.turns.items())),
        **{name: watch.figures(elapsed) for name, watch in watches.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--transport", choices=TRANSPORTS, default="compat")
    parser.add_argument("--workers", type=int, default=12)
    parser.add_argument("--every", type=float, default=30.0, help="seconds between memory reports")
    parser.add_argument("--edge-env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--fault-rate", type=float, default=Rates.fault, help="of turns: an upstream fault")
    parser.add_argument("--cancel-rate", type=float, default=Rates.cancel, help="of turns: the client leaves")
    parser.add_argument("--pause-rate", type=float, default=Rates.pause, help="of turns: the reader pauses")
    args = parser.parse_args()
    edge_env = dict(item.split("=", 1) for item in args.edge_env)
    rates = Rates(fault=args.fault_rate, cancel=args.cancel_rate, pause=args.pause_rate)
    result = asyncio.run(run(args.minutes, args.transport, args.workers, args.every, edge_env, rates))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
