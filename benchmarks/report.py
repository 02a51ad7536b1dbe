"""Turns run results into the numbers the README quotes: one JSON file and one Markdown table.

"Added" numbers are differences of the same percentile between a gateway run and the baseline run at the
same concurrency in the same benchmark: the simulator, the load generator and the core they share cost the
same in both, so what remains is what the extra hop through the gateway costs.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.load import RunResult
from benchmarks.pieces import BYTES_PER_SECOND

KIB = 1024
# Past these shares of a core, queueing on that side dominates the latencies it shows.
SATURATED = 0.9


def percentile(values: np.ndarray, q: float) -> float | None:
    """The q-th percentile, or None without values."""
    return float(np.percentile(values, q)) if values.size else None


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


@dataclass(frozen=True)
class Row:
    """One line of the table: a run and, for gateway runs, what it adds to the baseline."""

    run: RunResult
    baseline: RunResult | None

    def summary(self) -> dict[str, Any]:
        """Everything about the run as plain JSON values (milliseconds, seconds, bytes)."""
        run = self.run
        lat, ttfa = run.latencies_ms, run.first_audio_ms
        audio_seconds = run.audio_bytes / BYTES_PER_SECOND
        out: dict[str, Any] = {
            "transport": run.transport,
            "streams": run.streams,
            "window_seconds": run.window_seconds,
            "latency_ms": {"p50": percentile(lat, 50), "p99": percentile(lat, 99), "max": _max(lat)},
            "first_audio_ms": {"p50": percentile(ttfa, 50), "p99": percentile(ttfa, 99)},
            "events_per_second": run.events / run.window_seconds,
            "audio_seconds_per_second": audio_seconds / run.window_seconds,
            "pieces_measured": int(lat.size),
            "turns_completed": run.turns_completed,
            "turns_cancelled_at_window_end": run.turns_cancelled,
            "errors": sum(run.errors.values()),
            "error_kinds": run.errors,
            "lost_or_reordered_pieces": run.bad_pieces,
            "incomplete_turns": run.incomplete_turns,
            "load_side_cpu_fraction": run.load_cpu_fraction,
        }
        if run.gateway_cpu_seconds is not None:
            out["gateway_cpu_seconds"] = run.gateway_cpu_seconds
            out["gateway_cpu_fraction"] = run.gateway_cpu_seconds / run.window_seconds
            out["gateway_cpu_seconds_per_audio_second"] = (
                run.gateway_cpu_seconds / audio_seconds if audio_seconds else None
            )
            out["gateway_cpu_us_per_event"] = (
                run.gateway_cpu_seconds / run.events * 1e6 if run.events else None
            )
        if run.gateway_rss_before is not None and run.gateway_rss_during is not None:
            out["gateway_rss_mib"] = run.gateway_rss_during / KIB / KIB
            out["gateway_rss_kib_per_stream"] = (
                (run.gateway_rss_during - run.gateway_rss_before) / KIB / run.streams
            )
        base = self.baseline
        if base is not None:
            out["added_latency_ms"] = {
                "p50": _diff(percentile(lat, 50), percentile(base.latencies_ms, 50)),
                "p99": _diff(percentile(lat, 99), percentile(base.latencies_ms, 99)),
                "max": _diff(_max(lat), _max(base.latencies_ms)),
            }
            out["added_first_audio_ms"] = {
                "p50": _diff(percentile(ttfa, 50), percentile(base.first_audio_ms, 50)),
                "p99": _diff(percentile(ttfa, 99), percentile(base.first_audio_ms, 99)),
            }
        return out


def _max(values: np.ndarray) -> float | None:
    return float(values.max()) if values.size else None


def healthy(summary: dict[str, Any]) -> bool:
    """No error, no lost or reordered byte, every whole turn complete."""
    return bool(
        summary["errors"] == 0
        and summary["lost_or_reordered_pieces"] == 0
        and summary["incomplete_turns"] == 0
        and summary["pieces_measured"] > 0
    )


def _ms(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return f"{value:+.2f}" if abs(value) < 100 else f"{value:+.0f}"


def _abs_ms(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f}" if value < 100 else f"{value:.0f}"


def _num(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


HEADER = (
    "| transport | streams | added TTFA p50 / p99 ms | added latency/event p50 / p99 / max ms "
    "| end-to-end p50 / p99 ms | events/s | audio s/s | gateway CPU s per audio s | gateway CPU "
    "| RSS KiB/stream | errors | lost/reordered |\n"
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def table_row(summary: dict[str, Any]) -> str:
    """One Markdown row."""
    lat = summary["latency_ms"]
    added = summary.get("added_latency_ms")
    ttfa = summary.get("added_first_audio_ms")
    cpu_fraction = summary.get("gateway_cpu_fraction")
    cells = [
        summary["transport"],
        str(summary["streams"]),
        f"{_ms(ttfa['p50'])} / {_ms(ttfa['p99'])}" if ttfa else "(reference)",
        f"{_ms(added['p50'])} / {_ms(added['p99'])} / {_ms(added['max'])}" if added else "(reference)",
        f"{_abs_ms(lat['p50'])} / {_abs_ms(lat['p99'])}",
        _num(summary["events_per_second"], 0),
        _num(summary["audio_seconds_per_second"], 1),
        _num(summary.get("gateway_cpu_seconds_per_audio_second"), 4),
        "n/a" if cpu_fraction is None else f"{cpu_fraction:.0%}",
        _num(summary.get("gateway_rss_kib_per_stream"), 1),
        str(summary["errors"]),
        str(summary["lost_or_reordered_pieces"] + summary["incomplete_turns"]),
    ]
    return "| " + " | ".join(cells) + " |"


def markdown(report: dict[str, Any]) -> str:
    """The whole Markdown report."""
    lines = [
        f"# audiochat benchmark: {report['streams']} concurrent streams",
        "",
        f"`{report['command']}` on {report['machine']['cpu']} ({report['machine']['cores']} cores), "
        f"Python {report['machine']['python']}, {report['started']}.",
        f"Placement: {report['placement']}. Pacing: {report['pacing_text']}. "
        f"Window {report['window_seconds']} s after a {report['ramp_seconds']} s ramp.",
        "",
        HEADER,
        *(table_row(summary) for summary in report["runs"]),
        "",
    ]
    idle = report.get("idle_memory")
    if idle:
        lines.append(
            f"Idle memory: {idle['kib_per_stream']:.1f} KiB per open Converse stream "
            f"({idle['streams']} streams, config sent, no turn; target at most 40)."
        )
    sweep = report.get("largest_streams_under_target") or {}
    for name, found in sweep.items():
        tried = ", ".join(
            f"{step['streams']}: {_ms(step['added_p99_ms'])} ms{'' if step['healthy'] else ' (errors)'}"
            for step in found["tried"]
        )
        best = found["largest"]
        verdict = f"**{best}** streams" if best else "**none** of the sizes tried"
        lines.append(
            f"Largest concurrency with p99 added latency under {found['target_ms']:g} ms over {name}: "
            f"{verdict} (p99 added per size: {tried})."
        )
    lines.extend(saturation_notes(report["runs"]))
    for note in report.get("notes", []):
        lines.append(f"Note: {note}")
    return "\n".join(lines) + "\n"


def saturation_notes(runs: list[dict[str, Any]]) -> list[str]:
    """Say which runs a saturated core distorts, so nobody reads their differences as the gateway's."""
    notes = []
    load_bound = [r["transport"] for r in runs if (r.get("load_side_cpu_fraction") or 0) >= SATURATED]
    if load_bound:
        notes.append(
            f"Load side at or above {SATURATED:.0%} of its core for: {', '.join(load_bound)}; "
            "its own queueing is in those latencies, so differences against them are not the gateway's."
        )
    saturated = [r["transport"] for r in runs if (r.get("gateway_cpu_fraction") or 0) >= SATURATED]
    if saturated:
        notes.append(
            f"Gateway core at or above {SATURATED:.0%} for: {', '.join(saturated)}; "
            "it cannot keep up, and its latencies grow with its queue."
        )
    return notes


def write(report: dict[str, Any], directory: Path) -> tuple[Path, Path]:
    """Write `latest.json` and `latest.md`; return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    json_path, md_path = directory / "latest.json", directory / "latest.md"
    json_path.write_text(json.dumps(report, indent=1, sort_keys=False) + "\n")
    md_path.write_text(markdown(report))
    return json_path, md_path
