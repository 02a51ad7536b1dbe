"""`python -m benchmarks.vad` (`make vad-eval`): each detector against the generated evaluation set.

Every case is fed in 20 ms chunks, as a client streams it, through service.vad.segmenter with the
default server_vad settings. A detected turn matches the true utterance it overlaps most; the table
reports the boundary errors of matched turns (detected minus true, ms), utterances with no match
(missed), detected turns matching no utterance or one already matched (false), and CPU seconds per
second of audio for one stream (so 1 / value is streams per core).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.vad_detectors import EnergyStream, FrameDetector, WebRtcStream
from benchmarks.vad_set import SNRS_DB, Case, cases, to_pcm16
from service.vad import silero
from service.vad.segmenter import Segmenter, SpeechStarted, SpeechStopped, VadSettings

RESULTS = Path(__file__).resolve().parent / "results" / "vad.md"
CHUNK_MS = 20

DETECTORS: dict[str, Callable[[int], FrameDetector]] = {
    "silero (onnxruntime)": silero.SileroStream,
    "webrtcvad mode 3": WebRtcStream,
    "energy": EnergyStream,
}


@dataclass
class Score:
    """Accumulated results of one detector over some cases."""

    start_errors: list[float] = field(default_factory=list)
    end_errors: list[float] = field(default_factory=list)
    missed: int = 0
    false: int = 0
    truths: int = 0
    cpu_seconds: float = 0.0
    audio_seconds: float = 0.0

    def add(self, other: Score) -> None:
        self.start_errors += other.start_errors
        self.end_errors += other.end_errors
        self.missed += other.missed
        self.false += other.false
        self.truths += other.truths
        self.cpu_seconds += other.cpu_seconds
        self.audio_seconds += other.audio_seconds


def detect(
    case: Case, make: Callable[[int], FrameDetector], settings: VadSettings
) -> tuple[list[tuple[int, int]], float]:
    """The turns (start, end ms) a detector finds in a case, and the CPU seconds it took."""
    pcm = to_pcm16(case.samples)
    chunk = case.rate_hz * CHUNK_MS // 1000 * 2
    began = time.process_time()
    detector = make(case.rate_hz)
    segmenter = Segmenter(settings, detector.frame_ms)
    turns: list[tuple[int, int]] = []
    start: int | None = None
    for offset in range(0, len(pcm), chunk):
        for probability in detector.feed(pcm[offset : offset + chunk]):
            event = segmenter.push(probability)
            if isinstance(event, SpeechStarted):
                start = event.audio_start_ms
            elif isinstance(event, SpeechStopped) and start is not None:
                turns.append((start, event.audio_end_ms))
                start = None
    if start is not None:
        turns.append((start, round(segmenter.position_ms)))
    return turns, time.process_time() - began


def score(case: Case, turns: Iterable[tuple[int, int]], cpu_seconds: float) -> Score:
    """Match detected turns to true utterances and count errors."""
    result = Score(truths=len(case.truths), cpu_seconds=cpu_seconds, audio_seconds=case.seconds)
    matched: set[int] = set()
    for start, end in turns:
        overlaps = [min(end, t.end_ms) - max(start, t.start_ms) for t in case.truths]
        best = int(np.argmax(overlaps)) if overlaps else -1
        if best < 0 or overlaps[best] <= 0 or best in matched:
            result.false += 1
            continue
        matched.add(best)
        result.start_errors.append(start - case.truths[best].start_ms)
        result.end_errors.append(end - case.truths[best].end_ms)
    result.missed = len(case.truths) - len(matched)
    return result


def _stat(values: list[float], q: float) -> str:
    return f"{np.percentile(values, q):+.0f}" if values else "n/a"


def _abs_stat(values: list[float], q: float) -> str:
    return f"{np.percentile(np.abs(values), q):.0f}" if values else "n/a"


def row(label: str, s: Score) -> str:
    """One Markdown table row."""
    cpu = s.cpu_seconds / s.audio_seconds if s.audio_seconds else 0.0
    return (
        f"| {label} | {_stat(s.start_errors, 50)} | {_abs_stat(s.start_errors, 95)} "
        f"| {_stat(s.end_errors, 50)} | {_abs_stat(s.end_errors, 95)} "
        f"| {s.missed}/{s.truths} | {s.false} | {cpu:.4f} |"
    )


HEADER = (
    "| detector / condition | start median ms | start p95 abs ms | end median ms | end p95 abs ms "
    "| missed | false turns | CPU s per audio s |\n|---|---:|---:|---:|---:|---:|---:|---:|"
)


def _group(noises: tuple[str, ...], snr_db: float | None, alone: bool = False) -> Callable[[Case], bool]:
    return lambda case: case.noise in noises and case.snr_db == snr_db and alone == (not case.truths)


def _groups() -> dict[str, Callable[[Case], bool]]:
    """The summary's rows: stationary noise and babble (speech-like) apart, at each SNR and alone."""
    groups = {"clean": _group(("none",), None)}
    for snr in SNRS_DB:
        groups[f"white/pink {snr} dB"] = _group(("white", "pink"), snr)
        groups[f"babble {snr} dB"] = _group(("babble",), snr)
    groups["white/pink alone"] = _group(("white", "pink"), None, alone=True)
    groups["babble alone"] = _group(("babble",), None, alone=True)
    return groups


CONCURRENCY = (1, 16, 64, 256)
CONCURRENT_SECONDS = 10


async def _concurrent_cpu(case: Case, streams: int, batched: bool) -> float:
    """CPU seconds per audio second per stream: `streams` tasks, each its own Silero stream, woken each
    20 ms tick to feed that tick's chunk, as a server's conversation tasks are woken by their clients."""
    pcm = to_pcm16(case.samples)[: case.rate_hz * 2 * CONCURRENT_SECONDS]
    chunk = case.rate_hz * CHUNK_MS // 1000 * 2
    ticks = [pcm[offset : offset + chunk] for offset in range(0, len(pcm), chunk)]
    queues: list[asyncio.Queue[bytes | None]] = [asyncio.Queue() for _ in range(streams)]
    tick_done = asyncio.Event()
    remaining = 0

    async def stream(queue: asyncio.Queue[bytes | None]) -> None:
        nonlocal remaining
        detector = silero.SileroStream(case.rate_hz)
        while (piece := await queue.get()) is not None:
            if batched:
                await detector.feed_batched(piece)
            else:
                detector.feed(piece)
            remaining -= 1
            if remaining == 0:
                tick_done.set()

    began = time.process_time()
    tasks = [asyncio.create_task(stream(queue)) for queue in queues]
    for piece in ticks:
        tick_done.clear()
        remaining = streams
        for queue in queues:
            queue.put_nowait(piece)
        await tick_done.wait()
    for queue in queues:
        queue.put_nowait(None)
    await asyncio.gather(*tasks)
    return (time.process_time() - began) / (streams * len(pcm) / (2 * case.rate_hz))


def concurrency_report(case: Case) -> list[str]:
    """Silero's CPU per stream at several concurrencies, each frame alone and batched across streams."""
    lines = [
        "| streams | CPU s per audio s per stream, alone | batched | streams per core, batched |",
        "|---:|---:|---:|---:|",
    ]
    for streams in CONCURRENCY:
        alone = asyncio.run(_concurrent_cpu(case, streams, batched=False))
        batched = asyncio.run(_concurrent_cpu(case, streams, batched=True))
        lines.append(f"| {streams} | {alone:.4f} | {batched:.4f} | {1 / batched:.0f} |")
    return lines


def evaluate(names: list[str], settings: VadSettings) -> str:
    """Run the detectors over every case and return the Markdown report."""
    all_cases = cases()
    silero.load()
    groups = _groups()
    summary: list[str] = []
    detail: list[str] = []
    for name in names:
        per_case = [(case, score(case, *detect(case, DETECTORS[name], settings))) for case in all_cases]
        total = Score()
        for _, s in per_case:
            total.add(s)
        for group, keep in groups.items():
            part = Score()
            for case, s in per_case:
                if keep(case):
                    part.add(s)
            summary.append(row(f"{name}, {group}", part))
        summary.append(row(f"**{name}, all**", total))
        for case, s in per_case:
            detail.append(row(f"{name}, {case.name}, {case.rate_hz // 1000} kHz", s))
    return "\n".join(
        [
            "# VAD evaluation (`make vad-eval`)",
            "",
            f"Settings: {settings}. {len(all_cases)} cases (clean, white/pink/babble noise at 20/10/5 dB SNR"
            " and noise alone, each at 8/16/24/48 kHz), fed in 20 ms chunks. Errors are detected minus true"
            " boundary; start is confirmed speech's first voiced frame, end its first silent frame.",
            "",
            "## Summary (all rates)",
            "",
            HEADER,
            *summary,
            "",
            "## Concurrent streams (Silero, 24 kHz, clean case)",
            "",
            f"One task per stream, all woken each {CHUNK_MS} ms tick with that tick's chunk,"
            f" {CONCURRENT_SECONDS} s of audio. 'alone' runs each frame in its own onnxruntime call,"
            " 'batched' the frames of one event-loop round in one call (service.vad.batch, what the server"
            " does). Chunks arriving in the same round are the best case for batching; a server's arrive"
            f" spread over the {CHUNK_MS} ms, so its batches are smaller.",
            "",
            *concurrency_report(next(c for c in all_cases if c.noise == "none" and c.rate_hz == 24_000)),
            "",
            "## Every case",
            "",
            HEADER,
            *detail,
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--detector", action="append", choices=sorted(DETECTORS), help="default: all")
    parser.add_argument("--output", type=Path, default=RESULTS, help="Markdown report (default: %(default)s)")
    args = parser.parse_args(argv)
    report = evaluate(args.detector or list(DETECTORS), VadSettings())
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report)
    print(report.split("## Every case")[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
