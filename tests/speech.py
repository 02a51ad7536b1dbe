"""Spoken test input from the offline voice: utterances trimmed to their sound, silences, noise."""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache

import numpy as np

from service.offline.speech import synthesize

RATE_HZ = 24_000


@cache
def utterance(text: str, voice: str = "echo") -> bytes:
    """24 kHz pcm16 of `text`, its leading and trailing silence cut, so its boundaries are known."""
    samples = np.frombuffer(synthesize(text, voice), dtype="<i2")
    loud = np.nonzero(np.abs(samples) > 100)[0]
    return samples[loud[0] : loud[-1] + 1].tobytes()


def silence(ms: int) -> bytes:
    """`ms` of digital silence at 24 kHz."""
    return bytes(RATE_HZ * ms // 1000 * 2)


def white_noise(ms: int, level: float = 0.03, seed: int = 3) -> bytes:
    """`ms` of white noise at `level` RMS (of full scale)."""
    rng = np.random.default_rng(seed)
    samples = rng.standard_normal(RATE_HZ * ms // 1000) * level * 32767
    return np.clip(samples, -32768, 32767).astype("<i2").tobytes()


def ms_of(pcm16: bytes) -> float:
    """Duration of 24 kHz pcm16 in ms."""
    return len(pcm16) / 2 / RATE_HZ * 1000


def chunks(pcm16: bytes, ms: int = 20) -> Iterator[bytes]:
    """Real-time-sized pieces, as a microphone delivers them."""
    step = RATE_HZ * ms // 1000 * 2
    for offset in range(0, len(pcm16), step):
        yield pcm16[offset : offset + step]
