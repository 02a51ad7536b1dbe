"""The memory report SIGUSR1 writes (service/memory_report.py): what the soak reads to tell leaks apart."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import tracemalloc
from pathlib import Path
from typing import Any

from service import memory_report, metrics


class Held:
    """Objects of a type no other test makes, so their count is exactly what this test holds."""


async def test_sigusr1_writes_a_report_with_rss_malloc_and_live_objects(tmp_path: Path) -> None:
    path = tmp_path / "memory.json"
    loop = asyncio.get_running_loop()
    reporter = memory_report.install(loop, {"AUDIOCHAT_MEMORY_REPORT": str(path)})
    assert reporter is not None
    held = [Held() for _ in range(5000)]
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        for _ in range(100):
            await asyncio.sleep(0.02)
            if reporter.count:
                break
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)
    report = written(path)
    assert report["report"] == 0
    assert report["rss_bytes"] > 10 * 1024 * 1024
    assert report["malloc"]["in_use_bytes"] > 0  # glibc: this machine and the image
    assert report["pymalloc"]["arenas"] > 0 and report["pymalloc"]["in_use_bytes"] > 0
    counts = dict(report["objects_by_type"])
    assert counts[f"{__name__}.Held"] == len(held)


def written(path: Path) -> dict[str, Any]:
    """The report at `path`, which must be the only file of its directory (no `.partial` left behind)."""
    assert [entry.name for entry in path.parent.iterdir()] == [path.name]
    report: dict[str, Any] = json.loads(path.read_text())
    return report


def test_without_the_variable_sigusr1_is_left_alone() -> None:
    loop = asyncio.new_event_loop()
    try:
        assert memory_report.install(loop, {}) is None
        assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
    finally:
        loop.close()


def test_a_traced_process_reports_what_grew_since_the_last_report_by_traceback(tmp_path: Path) -> None:
    tracemalloc.start(4)
    try:
        reporter = memory_report.MemoryReport(tmp_path / "memory.json")
        reporter.build()
        grown = [bytes(1000) + str(n).encode() for n in range(2000)]  # about 2 MB from this line
        report = reporter.build()
    finally:
        tracemalloc.stop()
    assert report["tracing"] and report["traced_bytes"] > 0
    top = report["grown_since_last"][0]
    assert top["count"] >= len(grown)
    assert top["bytes"] >= 2_000_000
    assert any(frame.startswith(__file__) for frame in top["traceback"])


def test_trim_reports_rss_after_glibc_returns_free_pages(tmp_path: Path) -> None:
    reporter = memory_report.MemoryReport(tmp_path / "memory.json", trim=True)
    report = reporter.build()
    assert report["rss_after_trim_bytes"] > 0
    # Only that the trim ran and was measured: the pages it returns are not comparable across readings,
    # since this process (pytest's threads) allocates between them (free bytes after > before was seen).
    assert report["malloc_after_trim"]["free_bytes"] >= 0
    assert report["malloc_after_trim"]["in_use_bytes"] > 0


def test_a_report_reads_the_stores_in_the_same_instant_as_the_allocator() -> None:
    # Gauges held by functions, as the edge and the core register them: the report reads them itself.
    metrics.SSE_RESUME_BYTES.set_function(lambda: 7 * 1024 * 1024)
    metrics.CONVERSATION_STORE_BYTES.set_function(lambda: 3 * 1024 * 1024)
    try:
        stores = memory_report.MemoryReport(Path("unused")).build()["stores_bytes"]
    finally:
        metrics.SSE_RESUME_BYTES.set_function(lambda: 0)
        metrics.CONVERSATION_STORE_BYTES.set_function(lambda: 0)
    assert stores == {"sse_resume_bytes": 7 * 1024 * 1024, "conversation_store_bytes": 3 * 1024 * 1024}
