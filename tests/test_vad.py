"""Voice activity detection: the Silero model through onnxruntime, and the turn segmenter over it."""

from __future__ import annotations

import asyncio
import hashlib

import numpy as np
import pytest
import soxr

from benchmarks.vad import score
from benchmarks.vad_set import Case, Truth
from service.offline.speech import synthesize
from service.vad import silero
from service.vad.segmenter import Segmenter, SpeechEvent, SpeechStarted, SpeechStopped, VadSettings

# Silero VAD v6's silero_vad.onnx, as in the official silero-vad 6.2.x wheel.
SILERO_V6_SHA256 = "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3"


def test_the_model_is_silero_v6_from_its_wheel() -> None:
    assert hashlib.sha256(silero.model_bytes()).hexdigest() == SILERO_V6_SHA256


def _events(probabilities: list[float], settings: VadSettings, frame_ms: float = 32.0) -> list[SpeechEvent]:
    segmenter = Segmenter(settings, frame_ms)
    return [e for p in probabilities if (e := segmenter.push(p)) is not None]


def test_segmenter_turn_positions_follow_frames() -> None:
    # 10 silent frames, 20 voiced, 30 silent: speech from 320 ms to 960 ms.
    events = _events([0.0] * 10 + [0.9] * 20 + [0.0] * 30, VadSettings())
    assert events == [SpeechStarted(320), SpeechStopped(960)]


def test_segmenter_ignores_sounds_shorter_than_the_minimum() -> None:
    click = [0.0] * 5 + [1.0] * 3 + [0.0] * 40  # 96 ms voiced
    assert _events(click, VadSettings()) == []
    assert _events(click, VadSettings(min_speech_duration_ms=90)) == [SpeechStarted(160), SpeechStopped(256)]


def test_segmenter_bridges_pauses_shorter_than_the_silence_duration() -> None:
    pause = [0.0] * 10  # 320 ms
    frames = [0.9] * 10 + pause + [0.9] * 10 + [0.0] * 20
    assert _events(frames, VadSettings(silence_duration_ms=400)) == [SpeechStarted(0), SpeechStopped(960)]
    assert _events(frames, VadSettings(silence_duration_ms=300)) == [
        SpeechStarted(0),
        SpeechStopped(320),
        SpeechStarted(640),
        SpeechStopped(960),
    ]


def test_segmenter_hysteresis_keeps_speech_through_hovering_frames() -> None:
    # Probabilities just under the threshold (but above threshold - 0.15) do not end speech.
    frames = [0.9] * 10 + [0.4] * 30 + [0.9] * 2 + [0.1] * 20
    events = _events(frames, VadSettings(silence_duration_ms=200))
    assert events == [SpeechStarted(0), SpeechStopped(1344)]


def utterance_pcm() -> bytes:
    return synthesize("Could you tell me the way to the station?", "echo")


def _speech_24k(text: str) -> np.ndarray:
    return np.frombuffer(synthesize(text, "echo"), dtype="<i2").astype(np.float32) / 32768.0


def _feed(samples: np.ndarray, rate: int, chunk_ms: int = 20) -> list[SpeechEvent]:
    stream = silero.SileroStream(rate)
    segmenter = Segmenter(VadSettings(), stream.frame_ms)
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()
    step = rate * chunk_ms // 1000 * 2
    events: list[SpeechEvent] = []
    for offset in range(0, len(pcm), step):
        events += [
            e for p in stream.feed(pcm[offset : offset + step]) if (e := segmenter.push(p)) is not None
        ]
    return events


@pytest.mark.parametrize("rate", [8_000, 16_000, 24_000, 44_100, 48_000])
def test_silero_finds_speech_boundaries_at_any_rate(rate: int) -> None:
    speech = _speech_24k("Could you tell me the way to the station?")
    loud = np.nonzero(np.abs(speech) > 0.003)[0]
    speech = speech[loud[0] : loud[-1]]
    signal = np.concatenate([np.zeros(24_000, np.float32), speech, np.zeros(24_000, np.float32)])
    signal += np.random.default_rng(1).standard_normal(len(signal)).astype(np.float32) * 0.003
    resampled = signal if rate == 24_000 else soxr.resample(signal, 24_000, rate)
    end_ms = 1000 + len(speech) / 24
    events = _feed(resampled, rate)
    assert [type(e) for e in events] == [SpeechStarted, SpeechStopped]
    started, stopped = events
    assert isinstance(started, SpeechStarted) and isinstance(stopped, SpeechStopped)
    assert abs(started.audio_start_ms - 1000) <= 100
    assert abs(stopped.audio_end_ms - end_ms) <= 150


def test_silero_hears_no_speech_in_noise_alone() -> None:
    rng = np.random.default_rng(7)
    white = rng.standard_normal(24_000 * 5).astype(np.float32) * 0.05
    assert _feed(white, 24_000) == []


def test_silero_rejects_rates_it_cannot_take() -> None:
    with pytest.raises(ValueError, match="outside"):
        silero.SileroStream(4_000)


def test_evaluation_scoring_counts_missed_and_false_turns() -> None:
    case = Case(
        "t", "none", None, 16_000, np.zeros(16_000 * 10, np.float32), (Truth(1000, 2000), Truth(5000, 6000))
    )
    result = score(case, [(1020, 2100), (1500, 1900), (8000, 9000)], cpu_seconds=0.5)
    assert result.start_errors == [20] and result.end_errors == [100]
    assert result.missed == 1 and result.false == 2


async def test_batched_streams_get_the_probabilities_each_gets_alone() -> None:
    rng = np.random.default_rng(5)
    speech = np.frombuffer(utterance_pcm(), dtype="<i2")
    inputs = []
    for index in range(5):  # different audio per stream, so a mixed-up state or row shows
        noise = rng.standard_normal(len(speech) + 4800 * index) * 300
        mixed = noise.copy()
        mixed[4800 * index :] += speech
        inputs.append(np.clip(mixed, -32768, 32767).astype("<i2").tobytes())
    alone = [silero.SileroStream(24_000).feed(pcm) for pcm in inputs]
    streams = [silero.SileroStream(24_000) for _ in inputs]
    batched: list[list[float]] = [[] for _ in inputs]

    async def feed(index: int) -> None:
        for offset in range(0, len(inputs[index]), 960):
            batched[index] += await streams[index].feed_batched(inputs[index][offset : offset + 960])

    await asyncio.gather(*(feed(index) for index in range(len(inputs))))
    for one, many in zip(alone, batched, strict=True):
        assert len(one) == len(many) > 50
        assert np.allclose(one, many, atol=1e-4)
    assert max(max(p) for p in batched) > 0.9 and min(min(p) for p in batched) < 0.1


def test_chunks_that_split_samples_give_the_same_probabilities() -> None:
    pcm = utterance_pcm()
    whole = silero.SileroStream(24_000).feed(pcm)
    stream = silero.SileroStream(24_000)
    split: list[float] = []
    for offset in range(0, len(pcm), 963):  # odd sizes: every other chunk starts mid-sample
        split += stream.feed(pcm[offset : offset + 963])
    assert len(split) == len(whole) > 50
    assert np.allclose(split, whole, atol=1e-4)
