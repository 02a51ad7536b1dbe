"""The VAD evaluation set: offline-voice utterances with known boundaries, silences of known length, noise.

Everything is generated (espeak-ng through service.offline.speech, numpy noise with a fixed seed), so the
set is the same on every machine and nothing is downloaded. The true boundaries of an utterance are those
of its clean synthesis: the first and last 10 ms window whose level is above -50 dBFS.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
import soxr

from service.offline.speech import synthesize

SOURCE_RATE_HZ: Final = 24_000
RATES_HZ: Final = (8_000, 16_000, 24_000, 48_000)
SNRS_DB: Final = (20, 10, 5)
NOISES: Final = ("white", "pink", "babble")
# Utterances of several lengths and voices, separated by silences longer than the default
# silence_duration_ms (500 ms) so each one is one turn.
UTTERANCES: Final = (
    ("Yes.", "alloy"),
    ("What time does the train to Boston leave tomorrow morning?", "echo"),
    ("Okay, thanks.", "shimmer"),
    ("Tell me a short story about a lighthouse keeper and his cat, please.", "onyx"),
    ("Stop.", "nova"),
    ("Could you repeat the last part more slowly?", "ash"),
)
GAPS_MS: Final = (800, 1200, 2000, 900, 1500)
LEAD_MS: Final = 1000
TAIL_MS: Final = 1500
NOISE_ONLY_SECONDS: Final = 20.0
BABBLE_TEXT: Final = (
    "The weather has been lovely this week and we went to the market on Saturday.",
    "I think the meeting moved to Thursday afternoon but nobody told the others.",
    "She bought three books and a lamp, then walked all the way home in the rain.",
    "Numbers one two three four five six seven eight nine ten eleven twelve.",
    "Please remember to water the plants and feed the dog before you leave.",
    "The committee will publish its report after the summer holidays end.",
)
_SILENCE_DBFS: Final = -50.0
Samples = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Truth:
    """One utterance's true boundaries in ms from the start of the signal."""

    start_ms: float
    end_ms: float


@dataclass(frozen=True)
class Case:
    """One signal to judge: mono float samples at `rate_hz` and the turns it holds."""

    name: str
    noise: str
    snr_db: float | None
    rate_hz: int
    samples: Samples
    truths: tuple[Truth, ...]

    @property
    def seconds(self) -> float:
        """Length of the signal in seconds."""
        return len(self.samples) / self.rate_hz


def _speech(text: str, voice: str) -> Samples:
    return np.frombuffer(synthesize(text, voice), dtype="<i2").astype(np.float32) / 32768.0


def _active_bounds(samples: Samples) -> tuple[int, int]:
    """First and last sample of the windows louder than -50 dBFS."""
    window = SOURCE_RATE_HZ // 100
    count = len(samples) // window
    rms = np.sqrt(np.mean(samples[: count * window].reshape(count, window) ** 2, axis=1) + 1e-12)
    loud = np.nonzero(20 * np.log10(rms) > _SILENCE_DBFS)[0]
    return int(loud[0]) * window, (int(loud[-1]) + 1) * window


def clean_conversation() -> tuple[Samples, tuple[Truth, ...], Samples]:
    """The speech track at 24 kHz, its truths, and a mask of where speech is (for the SNR)."""
    pieces: list[Samples] = [np.zeros(LEAD_MS * SOURCE_RATE_HZ // 1000, np.float32)]
    truths: list[Truth] = []
    position = len(pieces[0])
    for index, (text, voice) in enumerate(UTTERANCES):
        speech = _speech(text, voice)
        first, last = _active_bounds(speech)
        speech = speech[first:last]
        truths.append(
            Truth(position * 1000 / SOURCE_RATE_HZ, (position + len(speech)) * 1000 / SOURCE_RATE_HZ)
        )
        gap = GAPS_MS[index] if index < len(GAPS_MS) else TAIL_MS
        pieces += [speech, np.zeros(gap * SOURCE_RATE_HZ // 1000, np.float32)]
        position += len(speech) + len(pieces[-1])
    track = np.concatenate(pieces)
    mask = np.zeros(len(track), dtype=bool)
    for truth in truths:
        mask[round(truth.start_ms * 24) : round(truth.end_ms * 24)] = True
    return track, tuple(truths), mask


def noise(kind: str, length: int, seed: int) -> Samples:
    """Unit-power noise of `kind` (white, pink, babble), `length` samples at 24 kHz."""
    rng = np.random.default_rng(seed)
    if kind == "white":
        out = rng.standard_normal(length)
    elif kind == "pink":
        spectrum = np.fft.rfft(rng.standard_normal(length))
        frequency = np.fft.rfftfreq(length)
        spectrum[1:] /= np.sqrt(frequency[1:])  # 1/f power
        spectrum[0] = 0
        out = np.fft.irfft(spectrum, n=length)
    elif kind == "babble":
        out = np.zeros(length)
        # Six talkers at random offsets, looped to cover the signal: the crowd of a cafe.
        for index, text in enumerate(BABBLE_TEXT):
            voice = ("fable", "onyx", "coral", "echo", "sage", "ash")[index]
            talker = np.tile(_speech(text, voice), length // SOURCE_RATE_HZ + 2)
            offset = int(rng.integers(0, SOURCE_RATE_HZ * 2))
            out += talker[offset : offset + length]
    else:
        raise ValueError(f"unknown noise {kind!r}")
    unit: Samples = (out / np.sqrt(float(np.mean(out**2)))).astype(np.float32)
    return unit


def _at_rate(samples: Samples, rate_hz: int) -> Samples:
    if rate_hz == SOURCE_RATE_HZ:
        return samples
    resampled: Samples = soxr.resample(samples, SOURCE_RATE_HZ, rate_hz, quality="VHQ").astype(np.float32)
    return resampled


def cases() -> list[Case]:
    """Every case: clean, each noise at each SNR, and each noise alone, at every rate."""
    track, truths, mask = clean_conversation()
    speech_power = float(np.mean(track[mask] ** 2))
    signals: list[tuple[str, str, float | None, Samples, tuple[Truth, ...]]] = [
        ("clean", "none", None, track, truths)
    ]
    for seed, kind in enumerate(NOISES):
        background = noise(kind, len(track), seed)
        for snr in SNRS_DB:
            gain = np.sqrt(speech_power / 10 ** (snr / 10))
            signals.append((f"{kind} {snr} dB", kind, snr, track + gain * background, truths))
        # Noise alone, as loud as at 10 dB SNR: any turn found is a false turn.
        alone = noise(kind, int(NOISE_ONLY_SECONDS * SOURCE_RATE_HZ), seed + 10)
        signals.append((f"{kind} only", kind, None, alone * np.sqrt(speech_power / 10), ()))
    out: list[Case] = []
    for name, kind, snr_db, samples, expected in signals:
        clipped = np.clip(samples, -1.0, 1.0).astype(np.float32)
        out += [Case(name, kind, snr_db, rate, _at_rate(clipped, rate), expected) for rate in RATES_HZ]
    return out


def to_pcm16(samples: Samples) -> bytes:
    """Little-endian pcm16 bytes of float samples in -1..1."""
    return (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()
