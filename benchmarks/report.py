"""Turns run results into the numbers the README quotes: one JSON file and one Markdown report.

"Added" numbers are differences of the same percentile between a run and the direct run (no relay) at the
same size and load model in the same benchmark: the simulator, the load generator and the core they share
cost the same in both, so what remains is the extra hop. They are refused (printed as "refused") when the
load side of either run was saturated, because then its own queueing is in both and the difference is noise.

The headline is CPU per relayed event and its ratios (gateway ÷ no-logic relay, LiteLLM ÷ gateway): they
hold across machines far better than absolute latencies. Each row is repeated; the table shows the median
and the spread (min-max) over the repeats.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.load import RunResult
from benchmarks.pieces import BYTES_PER_SECOND

KIB = 1024
# Past this share of a core, queueing on that side dominates the latencies it shows.
SATURATED = 0.9
# The load generator is one asyncio thread: past half a core its own scheduling delays show in latencies.
CLIENT_LIMIT = 0.5


def percentile(values: np.ndarray, q: float) -> float | None:
    """The q-th percentile, or None without values."""
    return float(np.percentile(values, q)) if values.size else None


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def load_saturation(run: RunResult) -> str:
    """Why the load side of `run` cannot be trusted for latencies ("" if it can)."""
    client = run.client_cpu_fraction or 0.0
    load = run.load_cpu_fraction or 0.0
    if client > CLIENT_LIMIT:
        return f"load client at {client:.0%} of its core (limit {CLIENT_LIMIT:.0%})"
    if load >= SATURATED:
        return f"load side (client and simulator) at {load:.0%} of its core"
    return ""


@dataclass(frozen=True)
class Row:
    """One run and, unless it is the direct run, what it adds to the direct run at the same size."""

    run: RunResult
    baseline: RunResult | None

    def summary(self) -> dict[str, Any]:
        """Everything about the run as plain JSON values (milliseconds, seconds, bytes, µs)."""
        run = self.run
        lat, ttfa = run.latencies_ms, run.first_audio_ms
        audio_seconds = run.audio_bytes / BYTES_PER_SECOND
        out: dict[str, Any] = {
            "transport": run.transport,
            "streams": run.streams,
            "think_seconds": run.think_seconds,
            "mean_active_streams": run.mean_active_streams,
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
            "client_cpu_fraction": run.client_cpu_fraction,
            "load_saturated": load_saturation(run),
            "gc_pauses": run.gc_pauses,
            "gc_total_ms": sum(g["total_ms"] for g in run.gc_pauses.values()) if run.gc_pauses else None,
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
            refused = out["load_saturated"] or load_saturation(base)
            out["added_refused"] = refused
            if refused:
                out["added_latency_ms"] = {"p50": None, "p99": None, "max": None}
                out["added_first_audio_ms"] = {"p50": None, "p99": None}
            else:
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


def spread(values: list[float | None]) -> dict[str, float | None]:
    """Median, min and max of the measured values (None where a repeat had none)."""
    present = [v for v in values if v is not None and not math.isnan(v)]
    if not present:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(present), "min": min(present), "max": max(present), "n": len(present)}


def _get(summary: dict[str, Any], *path: str) -> float | None:
    value: Any = summary
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value if isinstance(value, int | float) else None


AGGREGATED = {
    "cpu_us_per_event": ("gateway_cpu_us_per_event",),
    "server_core": ("gateway_cpu_fraction",),
    "added_p50_ms": ("added_latency_ms", "p50"),
    "added_p99_ms": ("added_latency_ms", "p99"),
    "added_max_ms": ("added_latency_ms", "max"),
    "end_to_end_p99_ms": ("latency_ms", "p99"),
    "client_core": ("client_cpu_fraction",),
    "load_core": ("load_side_cpu_fraction",),
    "mean_active_streams": ("mean_active_streams",),
    "events_per_second": ("events_per_second",),
    "rss_kib_per_stream": ("gateway_rss_kib_per_stream",),
    "gc_full_collections": ("gc_pauses", "2", "collections"),
    "gc_full_longest_ms": ("gc_pauses", "2", "longest_ms_at_most"),
    "gc_total_ms": ("gc_total_ms",),
}


def aggregate(key: str, name: str, summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """One table row from the repeats of a run: medians and spreads, summed errors, every repeat kept."""
    out: dict[str, Any] = {
        "row": key,
        "transport": name,
        "streams": summaries[0]["streams"],
        "think_seconds": summaries[0]["think_seconds"],
        "repeats": len(summaries),
        "errors": sum(s["errors"] for s in summaries),
        "lost_or_reordered": sum(s["lost_or_reordered_pieces"] + s["incomplete_turns"] for s in summaries),
        "added_refused": sorted({s.get("added_refused") or "" for s in summaries} - {""}),
        "healthy": all(healthy(s) for s in summaries),
        "runs": summaries,
    }
    for field, path in AGGREGATED.items():
        out[field] = spread([_get(s, *path) for s in summaries])
    return out


def ratio(numerator: dict[str, Any] | None, denominator: dict[str, Any] | None, field: str) -> float | None:
    """Median over median of one aggregated field of two rows, when both were measured."""
    if numerator is None or denominator is None:
        return None
    top, bottom = numerator[field]["median"], denominator[field]["median"]
    if top is None or bottom is None or bottom <= 0:
        return None
    return float(top / bottom)


def _ms(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return f"{value:+.2f}" if abs(value) < 100 else f"{value:+.0f}"


def _spread_text(values: dict[str, Any], digits: int = 0, percent: bool = False) -> str:
    median, low, high = values["median"], values["min"], values["max"]
    if median is None:
        return "n/a"

    def text(value: float) -> str:
        return f"{value:.0%}" if percent else f"{value:.{digits}f}"

    if values["n"] < 2:
        return text(median)
    return f"{text(median)} ({text(low)}-{text(high)})"


HEADER = (
    "| row | streams (think s) | active streams | CPU µs per event | ÷ relay | server core "
    "| added p50 / p99 / max ms | end-to-end p99 ms | client core | GC: full n, longest, all ms "
    "| errors | lost/reordered |\n"
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def table_row(row: dict[str, Any], relay: dict[str, Any] | None) -> str:
    """One Markdown row of an aggregated run."""
    if row["added_refused"]:
        added = "refused: " + "; ".join(row["added_refused"])
    elif row["row"] == "direct":
        added = "(reference)"
    else:
        added = " / ".join(
            _ms(row[field]["median"]) for field in ("added_p50_ms", "added_p99_ms", "added_max_ms")
        )
    per_relay = ratio(row, relay, "cpu_us_per_event") if row["row"] not in ("direct", "relay") else None
    cells = [
        row["transport"],
        f"{row['streams']} ({row['think_seconds']:g})",
        _spread_text(row["mean_active_streams"]),
        _spread_text(row["cpu_us_per_event"]),
        "n/a" if per_relay is None else f"{per_relay:.1f}x",
        _spread_text(row["server_core"], percent=True),
        added,
        _spread_text(row["end_to_end_p99_ms"], 1),
        _spread_text(row["client_core"], percent=True),
        _gc_text(row),
        str(row["errors"]),
        str(row["lost_or_reordered"]),
    ]
    return "| " + " | ".join(cells) + " |"


def _gc_text(row: dict[str, Any]) -> str:
    full, longest, total = (
        row[field]["median"] for field in ("gc_full_collections", "gc_full_longest_ms", "gc_total_ms")
    )
    if total is None:
        return "n/a"
    return f"{full or 0:.0f}, {'n/a' if longest is None else f'<= {longest:g}'}, {total:.0f}"


def headline(rows: list[dict[str, Any]]) -> list[str]:
    """The ratios the README quotes: each gateway row ÷ the relay, LiteLLM ÷ gateway gRPC."""
    by_key = {(row["row"], row["think_seconds"], row["streams"]): row for row in rows}
    lines = []
    for (key, think, streams), row in by_key.items():
        relay = by_key.get(("relay", think, streams))
        if key in ("direct", "relay", "litellm") or relay is None:
            continue
        cpu = ratio(row, relay, "cpu_us_per_event")
        if cpu is not None:
            lines.append(
                f"- CPU per relayed event, {row['transport']} ÷ no-logic relay at {streams} streams: "
                f"**{cpu:.2f}x**"
            )
    for (key, think, streams), row in by_key.items():
        before = by_key.get((f"{key}@compare", think, streams))
        cpu = ratio(row, before, "cpu_us_per_event")
        if cpu is not None and before is not None:
            lines.append(
                f"- {row['transport']} at {streams} streams, this tree ÷ {before['transport']}: "
                f"CPU per event **{cpu:.2f}x**"
            )
    for (key, think, streams), row in by_key.items():
        gateway = by_key.get(("grpc", think, streams))
        if key != "litellm" or gateway is None:
            continue
        cpu = ratio(row, gateway, "cpu_us_per_event")
        p99 = ratio(row, gateway, "added_p99_ms")
        lines.append(
            f"- LiteLLM ÷ gateway gRPC at {streams} streams: CPU per event **{_times(cpu)}**, "
            f"p99 added **{_times(p99)}**"
        )
    return lines


def _times(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}x"


def capacity_lines(capacities: dict[str, dict[str, Any]]) -> list[str]:
    """One line per searched row: the bracket, each step and why the search stopped."""
    lines = []
    for name, found in capacities.items():
        steps = ", ".join(f"{s['streams']}: {s['verdict']} ({s['why']})" for s in found["steps"])
        high = found["smallest_fail"]
        bracket = (
            f"**{found['largest_pass']}** streams hold, {high} do not"
            if high is not None
            else f"**{found['largest_pass']}** streams hold (no failure found)"
        )
        stopped = f"; stopped: {found['stopped']}" if found["stopped"] else ""
        lines.append(f"- {name}: {bracket}. Steps: {steps}{stopped}.")
    return lines


def markdown(report: dict[str, Any]) -> str:
    """The whole Markdown report."""
    machine = report["machine"]
    lines = [
        "# audiochat benchmark",
        "",
        f"`{report['command']}` on {machine['cpu']} ({machine['cores']} cores), Python {machine['python']}, "
        f"{report['started']}, {report['duration_seconds']:.0f} s.",
        f"Placement: {report['placement']}. Pacing: {report['pacing_text']}. Windows of "
        f"{report['window_seconds']:g} s after a {report['ramp_seconds']:g} s ramp, "
        f"{report['repeats']} repeats per row, interleaved. "
        f"Think time between turns: {report['think_text']}.",
        "",
        "## Headline",
        "",
        *(headline(report["rows"]) or ["- (no relay row measured: no ratio)"]),
        "",
        "## Rows",
        "",
        "Median over the repeats, (min-max) when repeated. CPU µs per event: the row's server process "
        "(gateway, relay or LiteLLM), user + system, per event delivered to the client.",
        "",
        HEADER,
    ]
    relays = {(row["think_seconds"], row["streams"]): row for row in report["rows"] if row["row"] == "relay"}
    lines += [table_row(row, relays.get((row["think_seconds"], row["streams"]))) for row in report["rows"]]
    lines.append("")
    idle = report.get("idle_memory")
    if idle:
        lines.append(
            f"Idle memory: {idle['kib_per_stream']:.1f} KiB per open Converse stream "
            f"({idle['streams']} streams, config sent, no turn)."
        )
        lines.append("")
    if report.get("capacity"):
        lines += [
            f"## Capacity (p99 added < {report['capacity_target_ms']:g} ms, server core < {SATURATED:.0%}, "
            f"healthy; {report['capacity_window_seconds']:g} s windows)",
            "",
            *capacity_lines(report["capacity"]),
            "",
        ]
    for note in report.get("notes", []):
        lines.append(f"Note: {note}")
    return "\n".join(lines) + "\n"


def write(report: dict[str, Any], directory: Path) -> tuple[Path, Path]:
    """Write `latest.json` and `latest.md` into `directory`; return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    json_path, md_path = directory / "latest.json", directory / "latest.md"
    json_path.write_text(json.dumps(report, indent=1, sort_keys=False) + "\n")
    md_path.write_text(markdown(report))
    return json_path, md_path
