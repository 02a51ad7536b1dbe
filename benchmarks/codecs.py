"""`python -m benchmarks.codecs` (part of `make bench`): what each audio format costs the gateway.

The offline voice's speech is encoded into every answer format and decoded from every input format by the
gateway's own code (service/audio). Per format: bytes per second of speech; the audio that must arrive
before the first encoded byte leaves (fed in 10 ms pieces, so the figure is the codec's, not the feed's);
CPU per audio second, beside the baseline measured in the same run: base64 of the pcm16, the work the
edge does on every pcm16 answer anyway. For streamed recordings: how long `commit` waits for the last
piece's decode, against decoding the whole file at commit. Writes benchmarks/results/codecs.{json,md}.
"""

from __future__ import annotations

import argparse
import base64
import functools
import io
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import numpy as np

from service.audio.decode import DecodeLimits, StreamDecoder, decode_file
from service.audio.encode import Encoder, OutputEncoding
from service.offline.speech import synthesize

RESULTS = Path(__file__).resolve().parent / "results"
RATE = 24_000
TEXT = (
    "Yes, a golden retriever is usually a wonderful family dog. They are patient, gentle and eager to "
    "please, and they love children. They need a lot of exercise and they shed, so plan for long walks."
)
OUTPUTS: tuple[OutputEncoding, ...] = ("pcm16", "wav", "opus", "webm_opus", "aac", "mp3", "flac")
# Input recordings, made by PyAV as phones and browsers make them: (container, codec, rate, channels).
INPUTS: dict[str, tuple[str, str, int, int]] = {
    "m4a (AAC, 44.1 kHz stereo)": ("ipod", "aac", 44_100, 2),
    "webm (Opus, 48 kHz mono)": ("webm", "libopus", 48_000, 1),
    "ogg (Opus, 48 kHz stereo)": ("ogg", "libopus", 48_000, 2),
    "ogg (Vorbis, 44.1 kHz stereo)": ("ogg", "vorbis", 44_100, 2),
    "flac (16 kHz mono)": ("flac", "flac", 16_000, 1),
    "mp3 (44.1 kHz mono)": ("mp3", "libmp3lame", 44_100, 1),
    "wav (48 kHz stereo float)": ("wav", "pcm_f32le", 48_000, 2),
}


def cpu_seconds(work: Callable[[], object], repeat: int) -> float:
    """Process CPU seconds of one run of `work`, the best of `repeat` (the least disturbed by others)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        work()
        best = min(best, time.process_time() - start)
    return best


def encode_all(encoding: OutputEncoding, pcm: bytes, piece: int) -> tuple[int, int, int]:
    """(header bytes, total bytes, source samples fed before the first encoded byte after the header)."""
    encoder = Encoder(encoding)
    header = len(encoder.header())
    total, first = header, -1
    for start in range(0, len(pcm), piece):
        data = encoder.encode(pcm[start : start + piece])
        if data and first < 0:
            first = encoder.samples_in
        total += len(data)
    total += len(encoder.flush())
    return header, total, first


def measure_outputs(pcm: bytes, repeat: int) -> list[dict[str, Any]]:
    seconds = len(pcm) / 2 / RATE
    baseline = cpu_seconds(
        lambda: [base64.b64encode(pcm[i : i + 4800]) for i in range(0, len(pcm), 4800)], repeat
    )
    rows = []
    for encoding in OUTPUTS:
        header, total, first = encode_all(encoding, pcm, piece=480)  # 10 ms pieces: the codec's latency
        cpu = cpu_seconds(functools.partial(encode_all, encoding, pcm, 4800), repeat)
        rows.append(
            {
                "format": encoding,
                "kbit_per_s": round(total * 8 / seconds / 1000, 1),
                "header_bytes": header,
                "first_byte_after_ms": round(first * 1000 / RATE, 1),
                "encode_cpu_ms_per_audio_s": round(cpu * 1000 / seconds, 3),
                "encode_cpu_vs_base64": round(cpu / baseline, 1) if baseline > 0 else None,
            }
        )
    return [{"baseline_base64_cpu_ms_per_audio_s": round(baseline * 1000 / seconds, 4)}, *rows]


def recording(pcm: bytes, container: str, codec: str, rate: int, channels: int) -> bytes:
    out = io.BytesIO()
    layout = "stereo" if channels == 2 else "mono"
    with av.open(out, mode="w", format=container) as opened:
        stream = opened.add_stream(codec, rate=rate, layout=layout)
        assert isinstance(stream, av.audio.stream.AudioStream)
        if codec == "vorbis":
            stream.codec_context.options = {"strict": "experimental"}
        resampler = av.AudioResampler(format="s16", layout=layout, rate=rate)
        frame = av.AudioFrame.from_ndarray(
            np.frombuffer(pcm, "<i2").reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate, frame.pts = RATE, 0
        for part in [*resampler.resample(frame), *resampler.resample(None)]:
            for packet in stream.encode(part):
                opened.mux(packet)
        for packet in stream.encode(None):
            opened.mux(packet)
    return out.getvalue()


def streamed_commit_wait(data: bytes, pieces: int) -> float:
    """Seconds `finish()` takes after a recording came in `pieces`, a little apart like a recorder's."""
    decoder = StreamDecoder(DecodeLimits())
    size = len(data) // pieces + 1
    for start in range(0, len(data), size):
        decoder.feed(data[start : start + size])
        time.sleep(0.02)
    started = time.perf_counter()
    decoder.finish()
    return time.perf_counter() - started


def measure_inputs(pcm: bytes, repeat: int) -> list[dict[str, Any]]:
    seconds = len(pcm) / 2 / RATE
    rows = []
    for name, spec in INPUTS.items():
        data = recording(pcm, *spec)
        cpu = cpu_seconds(_decoding(data), repeat)
        whole = min(_wall(_decoding(data)) for _ in range(repeat))
        row: dict[str, Any] = {
            "format": name,
            "kbit_per_s": round(len(data) * 8 / seconds / 1000, 1),
            "decode_cpu_ms_per_audio_s": round(cpu * 1000 / seconds, 3),
            "whole_file_decode_ms": round(whole * 1000, 2),
        }
        if spec[0] in ("webm", "ogg", "flac"):
            row["streamed_commit_wait_ms"] = round(
                min(streamed_commit_wait(data, 12) for _ in range(repeat)) * 1000, 2
            )
        rows.append(row)
    return rows


def _decoding(data: bytes) -> Callable[[], object]:
    return lambda: decode_file(data, DecodeLimits())


def _wall(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def markdown(result: dict[str, Any]) -> str:
    baseline, *outputs = result["outputs"]
    lines = [
        f"# Codecs: {result['audio_seconds']} s of the offline voice's speech, best of {result['repeat']}",
        "",
        "Baseline (same run): base64 of the pcm16,"
        f" {baseline['baseline_base64_cpu_ms_per_audio_s']} ms CPU per audio second.",
        "",
        "| answer format | kbit/s | header bytes | first byte after (ms of audio)"
        " | encode CPU ms per audio s | x base64 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in outputs:
        lines.append(
            f"| {row['format']} | {row['kbit_per_s']} | {row['header_bytes']}"
            f" | {row['first_byte_after_ms']} | {row['encode_cpu_ms_per_audio_s']}"
            f" | {row['encode_cpu_vs_base64']} |"
        )
    lines += [
        "",
        "| recording | kbit/s | decode CPU ms per audio s | whole-file decode ms"
        " | commit wait when streamed, ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in result["inputs"]:
        lines.append(
            f"| {row['format']} | {row['kbit_per_s']} | {row['decode_cpu_ms_per_audio_s']} |"
            f" {row['whole_file_decode_ms']} | {row.get('streamed_commit_wait_ms', '(kept whole)')} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeat", type=int, default=5, help="runs per figure; the best is kept")
    args = parser.parse_args()
    pcm = synthesize(TEXT, "alloy")
    result = {
        "audio_seconds": round(len(pcm) / 2 / RATE, 2),
        "repeat": args.repeat,
        "pyav": av.__version__,
        "outputs": measure_outputs(pcm, args.repeat),
        "inputs": measure_inputs(pcm, args.repeat),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "codecs.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "codecs.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
