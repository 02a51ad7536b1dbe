"""What the process's memory holds, written to a file on SIGUSR1: for soaks and leak hunts, off by default.

`AUDIOCHAT_MEMORY_REPORT=PATH` installs the handler; each SIGUSR1 then writes one JSON report to PATH (the
file is replaced whole, so a reader never sees half of one). A report tells three stories apart:

- the resident set (`rss_bytes`) against what glibc's malloc holds (`malloc`: `in_use_bytes` handed out,
  `free_bytes` kept in its arenas but not returned to the system) and what Python's own small-object
  allocator holds (`pymalloc`: `arenas` of 1 MiB, `in_use_bytes` of live blocks): RSS that rises while
  the bytes in use do not is fragmentation, not a leak;
- what the two bounded caches hold in the same instant (`stores_bytes`: the SSE resume store's and the
  conversation store's gauges), so a reader can subtract them from the allocator's figures;
- live Python objects by type (`objects_by_type`, the collector's tracked objects, top 40), and with
  tracing on (the standard `PYTHONTRACEMALLOC=FRAMES` variable), the allocations still alive by traceback
  (`top_allocations`) and what grew since the previous report (`grown_since_last`) and since the first
  (`grown_since_first`: ask for the first after warm-up);
- with `AUDIOCHAT_MEMORY_REPORT_TRIM=1`, `rss_after_trim_bytes`: RSS after `malloc_trim(0)` handed glibc's
  free pages back (the trim stays done: later RSS figures are lower by what it freed).

A report stops the event loop for as long as it takes (about a second per million objects; a traced
process is also slower all along): a diagnostic, never for production traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import gc
import json
import logging
import os
import signal
import sys
import tempfile
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY

from service import metrics

log = logging.getLogger(__name__)

# The process's two bounded caches, read in the same instant as the allocator figures (a /metrics scrape
# a moment apart can differ by tens of MiB under load, more than the growth a soak looks for).
STORE_GAUGES = {
    "sse_resume_bytes": (metrics.EDGE_REGISTRY, "audiochat_sse_resume_buffer_bytes"),
    "conversation_store_bytes": (REGISTRY, "audiochat_conversation_store_bytes"),
}

TOP = 40  # entries per list in a report


class _MallInfo2(ctypes.Structure):
    # glibc's struct mallinfo2 (2.33+): every field a size_t.
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _libc() -> Any:
    name = ctypes.util.find_library("c")
    return None if name is None else ctypes.CDLL(name)


def rss_bytes() -> int:
    """This process's resident set, from /proc (0 where there is none)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def malloc_stats() -> dict[str, int] | None:
    """glibc malloc's totals over all arenas (None without glibc 2.33+): bytes in use and held free."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        return None
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    return {
        "in_use_bytes": info.uordblks + info.hblkhd,  # small/medium chunks handed out + mmapped blocks
        "free_bytes": info.fordblks,  # free chunks malloc keeps in its arenas
        "arena_bytes": info.arena,  # obtained with brk/mmap for the arenas (not the big mmapped blocks)
        "mmapped_bytes": info.hblkhd,
        "releasable_bytes": info.keepcost,  # at the top of the main heap, what trimming could return
    }


def pymalloc_stats() -> dict[str, int] | None:
    """Python's small-object allocator: its arenas (mmapped, 1 MiB each) and the bytes of live blocks.

    glibc's figures do not see these arenas; CPython prints them only to stderr (sys._debugmallocstats),
    so stderr is pointed at a file for the call. None where the build has no pymalloc.
    """
    if not hasattr(sys, "_debugmallocstats"):
        return None
    with tempfile.TemporaryFile() as out:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(out.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        text = out.read().decode(errors="replace")
    wanted = {
        "# arenas allocated current": "arenas",
        "# bytes in allocated blocks": "in_use_bytes",
        "# bytes in available blocks": "free_bytes",
    }
    stats: dict[str, int] = {}
    for line in text.splitlines():
        name, _, value = line.partition("=")
        if name.strip() in wanted:
            stats[wanted[name.strip()]] = int(value.strip().replace(",", ""))
    return stats if len(stats) == len(wanted) else None


def malloc_trim() -> bool:
    """Ask glibc to return free pages of every arena to the system; whether it could release any."""
    libc = _libc()
    return bool(libc is not None and hasattr(libc, "malloc_trim") and libc.malloc_trim(0))


def stores_bytes() -> dict[str, int]:
    """What the SSE resume store and the conversation store hold now, by their gauges; a store this
    process does not run (role edge or core, or the Redis store) is left out."""
    held: dict[str, int] = {}
    for name, (registry, gauge) in STORE_GAUGES.items():
        value = registry.get_sample_value(gauge)
        if value is not None:
            held[name] = int(value)
    return held


def objects_by_type(objects: list[Any], top: int = TOP) -> list[tuple[str, int]]:
    """How many of `objects` are of each type, most first."""
    counts = Counter(type(o) for o in objects)
    return [(f"{kind.__module__}.{kind.__qualname__}", n) for kind, n in counts.most_common(top)]


def _frames(trace: tracemalloc.Traceback) -> list[str]:
    return [f"{frame.filename}:{frame.lineno}" for frame in trace]


def _grown(snapshot: tracemalloc.Snapshot, since: tracemalloc.Snapshot) -> list[dict[str, Any]]:
    return [
        {"bytes": stat.size_diff, "count": stat.count_diff, "traceback": _frames(stat.traceback)}
        for stat in snapshot.compare_to(since, "traceback")[:TOP]
        if stat.size_diff > 0
    ]


class MemoryReport:
    """Writes reports to `path`; keeps the previous tracemalloc snapshot to say what grew since."""

    def __init__(self, path: Path, trim: bool = False) -> None:
        self.path = path
        self.trim = trim
        self._first: tracemalloc.Snapshot | None = None
        self._previous: tracemalloc.Snapshot | None = None
        self.count = 0

    def build(self) -> dict[str, Any]:
        """One report (see the module docstring)."""
        gc.collect()  # what is only waiting for the collector is not held
        # The collector's tracked objects (containers; not bytes or str), without those gc.freeze() set
        # aside at start-up: what the process allocated since.
        objects = gc.get_objects()
        report: dict[str, Any] = {
            "report": self.count,
            "rss_bytes": rss_bytes(),
            "malloc": malloc_stats(),
            "pymalloc": pymalloc_stats(),
            "gc_objects": len(objects),
            "objects_by_type": objects_by_type(objects),
            "tracing": tracemalloc.is_tracing(),
            "stores_bytes": stores_bytes(),
        }
        del objects
        if tracemalloc.is_tracing():
            snapshot = tracemalloc.take_snapshot().filter_traces(
                [tracemalloc.Filter(False, tracemalloc.__file__)]
            )
            current, peak = tracemalloc.get_traced_memory()
            report["traced_bytes"] = current
            report["traced_peak_bytes"] = peak
            report["top_allocations"] = [
                {"bytes": stat.size, "count": stat.count, "traceback": _frames(stat.traceback)}
                for stat in snapshot.statistics("traceback")[:TOP]
            ]
            if self._previous is not None and self._first is not None:
                report["grown_since_last"] = _grown(snapshot, self._previous)
                report["grown_since_first"] = _grown(snapshot, self._first)
            self._first = self._first or snapshot
            self._previous = snapshot
        if self.trim:
            malloc_trim()
            report["rss_after_trim_bytes"] = rss_bytes()
            report["malloc_after_trim"] = malloc_stats()
        self.count += 1
        return report

    def write(self) -> None:
        """Build a report and replace the file with it; a failure is logged, never raised."""
        try:
            report = self.build()
            partial = self.path.with_name(self.path.name + ".partial")
            partial.write_text(json.dumps(report, indent=1))
            partial.replace(self.path)
        except Exception:
            log.exception("memory report failed", extra={"path": str(self.path)})
        else:
            log.warning("memory report written", extra={"path": str(self.path), "report": report["report"]})


def install(loop: asyncio.AbstractEventLoop, environ: dict[str, str] | None = None) -> MemoryReport | None:
    """With AUDIOCHAT_MEMORY_REPORT set, write a report on each SIGUSR1; None when it is not set."""
    environ = dict(os.environ) if environ is None else environ
    path = environ.get("AUDIOCHAT_MEMORY_REPORT", "")
    if not path or sys.platform == "win32":
        return None
    reporter = MemoryReport(Path(path), trim=environ.get("AUDIOCHAT_MEMORY_REPORT_TRIM", "") == "1")
    loop.add_signal_handler(signal.SIGUSR1, reporter.write)
    return reporter
