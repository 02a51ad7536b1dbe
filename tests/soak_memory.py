"""The soak's memory figures: the gateway's RSS over the run, what holds it, and whether it stays flat.

Every `every` seconds the gateway's RSS is read from /proc and what its SSE resume store holds from the
edge's /metrics (`audiochat_sse_resume_buffer_bytes`). Every `report_every` seconds the gateway is also
sent SIGUSR1 and its memory report (service/memory_report.py) is read back: glibc malloc's bytes in use and
held free, Python's allocator arenas, live objects; with tracemalloc on, what grew by traceback. So a rise
can be told apart as the resume store filling, objects piling up, or malloc holding freed memory.

The resume store is a bounded cache whose size follows the load: `AUDIOCHAT_RESUME_SECONDS` (60) of SSE
events, at most `AUDIOCHAT_RESUME_BUFFER_BYTES` (256 MiB). On a shared machine the rate, and with it the
store, moves by tens of MiB from one minute to the next, so RSS alone has no steady level to judge.

The core's conversation store is the other one: each conversation's config, history and last answer for
`AUDIOCHAT_CONVERSATION_TTL_SECONDS` (an hour), at most `AUDIOCHAT_MAX_STORED_CONVERSATION_BYTES` (256 MiB);
in a ten-minute soak it only fills (`audiochat_conversation_store_bytes` on the core's /metrics).

Flat, as the soak defines it: over the second half of the run (the first half lets caches fill to their
steady state), the least-squares slope of the live bytes outside the two stores (glibc malloc's bytes in
use plus Python's small-object allocator's, minus what the stores hold; from the memory reports) is below
`FLAT_MIB_PER_MINUTE`: less than 5 MiB over the last five minutes of a ten-minute run. Live bytes, not
RSS: when the load falls and the store shrinks, malloc keeps the freed memory for reuse (its free bytes
rise as much), so RSS minus the store rises then without anything being held. Without memory reports the
verdict falls back to RSS minus the store. The raw RSS slope, the store's, malloc's free bytes' and the
collector's object count's are reported beside it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

MIB = 1024 * 1024
FLAT_MIB_PER_MINUTE = 1.0


def rss_mib(pid: int) -> float:
    """Resident memory of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def slope_per_minute(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MiB) points, in MiB per minute (0 with fewer than two points)."""
    if len(points) < 2:
        return 0.0
    mean_t = sum(t for t, _ in points) / len(points)
    mean_v = sum(v for _, v in points) / len(points)
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    if spread == 0:
        return 0.0
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / spread * 60


@dataclass
class MemoryWatch:
    """Samples one process's memory until cancelled."""

    pid: int
    every: float = 10.0
    metrics_url: str | None = None  # the edge's /metrics: what the SSE resume store holds
    core_metrics_url: str | None = None  # the core's /metrics: what the conversation store holds
    report_path: Path | None = None  # the gateway's AUDIOCHAT_MEMORY_REPORT, to ask for reports
    report_every: float = 60.0
    keep_reports: Path | None = None  # a directory to copy each full report into
    started: float = field(default_factory=time.monotonic)
    samples: list[dict[str, Any]] = field(default_factory=list)
    reports: int = 0

    async def run(self) -> None:
        next_report = self.report_every
        while True:
            await asyncio.sleep(self.every)
            seconds = time.monotonic() - self.started
            sample: dict[str, Any] = {"seconds": round(seconds, 1), "rss_mib": round(rss_mib(self.pid), 1)}
            if self.metrics_url is not None:
                sample.update(await resume_store(self.metrics_url))
            if self.core_metrics_url is not None:
                sample.update(await resume_store(self.core_metrics_url))
            if self.report_path is not None and seconds >= next_report:
                next_report += self.report_every
                report = await self._report()
                if report is not None:
                    sample.update(summarize(report))
            self.samples.append(sample)

    async def _report(self) -> dict[str, Any] | None:
        assert self.report_path is not None
        number = self.reports
        os.kill(self.pid, signal.SIGUSR1)
        for _ in range(300):
            await asyncio.sleep(0.1)
            try:
                report: dict[str, Any] = json.loads(self.report_path.read_text())
            except (OSError, ValueError):
                continue
            if report["report"] == number:
                self.reports += 1
                if self.keep_reports is not None:
                    kept = self.keep_reports / f"report-{number:03d}.json"
                    kept.write_text(json.dumps(report, indent=1))
                return report
        return None

    def figures(self, duration: float) -> dict[str, Any]:
        """The memory part of the soak's report."""
        half = duration / 2
        late = [s for s in self.samples if s["seconds"] >= half]
        outside = [(s["seconds"], s["rss_mib"] - stores_mib(s)) for s in late]
        live = [(s["seconds"], live_outside_store(s)) for s in late if "malloc_in_use_mib" in s]
        measure, points = ("live", live) if len(live) >= 2 else ("rss", outside)
        slope = slope_per_minute(points)
        minutes = [
            min(self.samples, key=lambda s: abs(s["seconds"] - 60 * m))
            for m in range(1, int(duration // 60) + 1)
        ]
        figures: dict[str, Any] = {
            "rss_mib_every_minute": [s["rss_mib"] for s in minutes],
            "resume_store_mib_every_minute": [s.get("resume_store_mib") for s in minutes],
            "conversation_store_mib_every_minute": [s.get("conversation_store_mib") for s in minutes],
            "live_outside_store_mib_every_report": [
                live_outside_store(s) for s in self.samples if "malloc_in_use_mib" in s
            ],
            "rss_mib_after_warm_up": late[0]["rss_mib"] if late else None,
            "rss_mib_end": self.samples[-1]["rss_mib"] if self.samples else None,
            "rss_minus_stores_slope_mib_per_minute": round(slope_per_minute(outside), 2),
            f"{measure}_outside_store_slope_mib_per_minute": round(slope, 2),
            "flat": slope < FLAT_MIB_PER_MINUTE if len(points) >= 2 else None,
            "flat_means": f"{measure} bytes outside the two stores: slope < {FLAT_MIB_PER_MINUTE:g} MiB/min"
            " over the second half",
        }
        for key in (
            "rss_mib",
            "resume_store_mib",
            "conversation_store_mib",
            "malloc_in_use_mib",
            "malloc_free_mib",
            "pymalloc_arenas",
            "pymalloc_in_use_mib",
            "gc_objects",
            "traced_mib",
        ):
            points = [(s["seconds"], s[key]) for s in late if key in s]
            if len(points) >= 2:
                figures[f"{key}_slope_per_minute_second_half"] = round(slope_per_minute(points), 2)
        figures["samples"] = self.samples
        return figures


def live_outside_store(sample: dict[str, Any]) -> float:
    """MiB in use by malloc and by Python's small-object allocator, minus what the two bounded caches hold
    (the edge's SSE resume store and the core's conversation store)."""
    live = float(sample["malloc_in_use_mib"]) + float(sample.get("pymalloc_in_use_mib", 0.0))
    return round(live - stores_mib(sample), 1)


def stores_mib(sample: dict[str, Any]) -> float:
    """MiB the SSE resume store and the conversation store hold in one sample."""
    return float(sample.get("resume_store_mib", 0.0)) + float(sample.get("conversation_store_mib", 0.0))


async def resume_store(metrics_url: str) -> dict[str, Any]:
    """What the edge's SSE resume store holds now (its gauges), or nothing when /metrics does not answer."""
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            text = (await client.get(metrics_url)).text
    except httpx.HTTPError:
        return {}
    values = {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    out: dict[str, Any] = {}
    if "audiochat_sse_resume_buffer_bytes" in values:
        out["resume_store_mib"] = round(values["audiochat_sse_resume_buffer_bytes"] / MIB, 1)
    if "audiochat_sse_resume_turns" in values:
        out["resume_store_turns"] = int(values["audiochat_sse_resume_turns"])
    if "audiochat_conversation_store_bytes" in values:
        out["conversation_store_mib"] = round(values["audiochat_conversation_store_bytes"] / MIB, 1)
    if "audiochat_conversation_store_conversations" in values:
        out["conversation_store_conversations"] = int(values["audiochat_conversation_store_conversations"])
    return out


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    """The few numbers of a gateway memory report that go into every sample."""
    out: dict[str, Any] = {"gc_objects": report["gc_objects"]}
    # The stores as the report read them, in the instant of its allocator figures: these replace the
    # sample's /metrics readings, taken a moment apart.
    stores = report.get("stores_bytes") or {}
    if "sse_resume_bytes" in stores:
        out["resume_store_mib"] = round(stores["sse_resume_bytes"] / MIB, 1)
    if "conversation_store_bytes" in stores:
        out["conversation_store_mib"] = round(stores["conversation_store_bytes"] / MIB, 1)
    malloc = report.get("malloc")
    if malloc:
        out["malloc_in_use_mib"] = round(malloc["in_use_bytes"] / MIB, 1)
        out["malloc_free_mib"] = round(malloc["free_bytes"] / MIB, 1)
    pymalloc = report.get("pymalloc")
    if pymalloc:
        out["pymalloc_arenas"] = pymalloc["arenas"]
        out["pymalloc_in_use_mib"] = round(pymalloc["in_use_bytes"] / MIB, 1)
    if "traced_bytes" in report:
        out["traced_mib"] = round(report["traced_bytes"] / MIB, 1)
    if "rss_after_trim_bytes" in report:
        out["rss_after_trim_mib"] = round(report["rss_after_trim_bytes"] / MIB, 1)
    out["top_types"] = report["objects_by_type"][:8]
    return out
