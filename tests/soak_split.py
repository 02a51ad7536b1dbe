"""Which process grows: one transport's soak with the core and the edge in two processes, malloc by process.

    python -m tests.soak_split [--minutes 5] [--transport compat] [--workers 12] [--edge-env NAME=VALUE]

`make soak` runs both roles in one process, so its memory figures cannot say which side holds what. Here
the core (`AUDIOCHAT_ROLE=core`) and the edge (`AUDIOCHAT_ROLE=edge`, against the core) each write a memory
report on SIGUSR1 (service/memory_report.py); every `--every` seconds a line gives, per process, RSS,
glibc malloc's bytes in use, the two stores' bytes and Python's allocator's bytes in use (all MiB).
`--edge-env` adds variables to the edge alone (an LD_PRELOAD'ed heaptrack, another event loop).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.processes import wait_ready
from tests.fault_upstream import FaultUpstream, script
from tests.soak import TRANSPORTS, Soak, free_port, start_gateway
from tests.soak_memory import rss_mib
from tests.upstream_server import fixture_events

MIB = 2**20
REPORT_WAIT_SECONDS = 30.0


def _report(pid: int, path: Path) -> dict[str, Any]:
    """The process's memory report, asked for by SIGUSR1 and read once written whole."""
    path.unlink(missing_ok=True)
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + REPORT_WAIT_SECONDS
    while time.monotonic() < deadline:
        if path.exists():
            report: dict[str, Any] = json.loads(path.read_text())
            return report
        time.sleep(0.1)
    raise TimeoutError(f"no memory report from pid {pid} in {REPORT_WAIT_SECONDS:.0f} s")


def _line(name: str, process: subprocess.Popen[bytes], report: dict[str, Any]) -> str:
    stores = sum(report.get("stores_bytes", {}).values())
    pymalloc = (report.get("pymalloc") or {}).get("in_use_bytes", 0)
    return (
        f"{name} rss={rss_mib(process.pid):.1f} malloc_in_use={report['malloc']['in_use_bytes'] / MIB:.2f} "
        f"stores={stores / MIB:.2f} pymalloc_in_use={pymalloc / MIB:.2f}"
    )


async def run(minutes: float, transport: str, workers: int, every: float, edge_env: dict[str, str]) -> None:
    async with FaultUpstream() as upstream:
        upstream.scripts["malformed"] = b"".join(fixture_events("audio_no_finish_reason")[:14]) + script(
            {"choices": [{"index": 0, "delta": {"audio": {"data": "!!!!"}}}]}
        )
        reports = Path(tempfile.mkdtemp(prefix="soak-split-"))
        grpc_port, http_port = free_port(), free_port()
        core = start_gateway(
            upstream.base_url,
            grpc_port,
            free_port(),
            free_port(),
            {"AUDIOCHAT_ROLE": "core", "AUDIOCHAT_MEMORY_REPORT": str(reports / "core.json")},
        )
        edge = start_gateway(
            upstream.base_url,
            free_port(),
            http_port,
            free_port(),
            {
                "AUDIOCHAT_ROLE": "edge",
                "AUDIOCHAT_CORE_TARGET": f"127.0.0.1:{grpc_port}",
                "AUDIOCHAT_MEMORY_REPORT": str(reports / "edge.json"),
                **edge_env,
            },
        )
        try:
            await wait_ready(f"http://127.0.0.1:{http_port}", timeout_seconds=180)
            soak = Soak(upstream, grpc_port, http_port, minutes, 0)

            async def sample() -> None:
                while True:
                    await asyncio.sleep(every)
                    turns = sum(soak.tally.turns.values())
                    parts = [f"t={time.monotonic() - soak.started:.0f}s turns={turns}"]
                    for name, process in (("core", core), ("edge", edge)):
                        report = await asyncio.to_thread(_report, process.pid, reports / f"{name}.json")
                        parts.append(_line(name, process, report))
                    print(" ".join(parts), flush=True)

            sampler = asyncio.create_task(sample())
            await asyncio.gather(*(soak.worker(transport, 1000 + n) for n in range(workers)))
            sampler.cancel()
        finally:
            for process in (edge, core):
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--transport", choices=TRANSPORTS, default="compat")
    parser.add_argument("--workers", type=int, default=12)
    parser.add_argument("--every", type=float, default=30.0, help="seconds between lines")
    parser.add_argument("--edge-env", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args()
    edge_env = dict(item.split("=", 1) for item in args.edge_env)
    asyncio.run(run(args.minutes, args.transport, args.workers, args.every, edge_env))


if __name__ == "__main__":
    main()
