"""Offline speech synthesis: espeak-ng through ctypes, resampled to the model's 24 kHz pcm16."""

from __future__ import annotations

import ctypes
import logging
import threading
import zlib
from functools import cache, lru_cache

import espeakng_loader
import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)

OUTPUT_SAMPLE_RATE = 24_000

# espeak-ng's public constants (speak_lib.h).
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_INITIALIZE_DONT_EXIT = 0x8000
_EE_OK = 0

# One distinct espeak-ng voice (accent + variant) per OpenAI voice name, picked to keep each voice's
# character (female or male, deeper or lighter, British for fable and ballad) as far as espeak-ng can.
# The offline voice refuses other names, as OpenAI does (service/offline/chat_request.py).
VOICES: dict[str, str] = {
    "alloy": "en-us+f3",
    "ash": "en-us+m3",
    "ballad": "en-gb-x-rp+m1",
    "coral": "en-us+f2",
    "echo": "en-us+m1",
    "fable": "en+m2",
    "nova": "en-us+f4",
    "onyx": "en-us+m7",
    "sage": "en+f2",
    "shimmer": "en-us+f5",
    "verse": "en-029+m3",
    "marin": "en-gb-scotland+f3",
    "cedar": "en-us-nyc+m5",
}
# Custom voices ({"id": "voice_..."}) hash onto these; they are not any OpenAI voice's.
_CUSTOM_VARIANTS = ("en-us+f1", "en-us+m2", "en+f4", "en+m4", "en-us+m6")
_DEFAULT_VARIANT = VOICES["alloy"]

# Windowed-sinc polyphase resampler 22,050 -> 24,000 Hz (ratio 160/147). Upsampling, so the
# filter only has to remove images above the input's Nyquist frequency.
_UP, _DOWN = 160, 147
_HALF_TAPS = 16
_CUTOFF = 0.92  # of the input Nyquist frequency: leaves a transition band below 11,025 Hz
_KAISER_BETA = 8.0
# espeak-ng peaks near full scale and the filter's ringing would clip: keep 2 dB of headroom.
_HEADROOM_GAIN = 0.8

_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class SpeechError(RuntimeError):
    """espeak-ng could not be loaded or failed to synthesize."""


class _Espeak:
    """The one espeak-ng instance of the process; every call must hold `_lock`."""

    def __init__(self) -> None:
        self._lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self._lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self._lib.espeak_Initialize.restype = ctypes.c_int
        self._lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self._lib.espeak_SetVoiceByName.restype = ctypes.c_int
        self._lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        self._lib.espeak_Synth.restype = ctypes.c_int
        data_path = espeakng_loader.get_data_path().encode()
        rate = self._lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path, _INITIALIZE_DONT_EXIT)
        if rate <= 0:
            raise SpeechError(f"espeak_Initialize failed ({rate})")
        self.sample_rate = rate
        self._chunks: list[bytes] = []
        # Kept on self: ctypes must not garbage-collect a callback that C still holds.
        self._callback = _SynthCallback(self._on_samples)
        self._lib.espeak_SetSynthCallback(self._callback)
        self._voice = ""
        logger.info("espeak-ng initialized at %d Hz", rate)

    def _on_samples(self, wav: ctypes._Pointer[ctypes.c_short], count: int, _events: int | None) -> int:
        if wav and count > 0:
            self._chunks.append(ctypes.string_at(wav, count * 2))
        return 0  # 0 = keep going

    def synth(self, text: str, variant: str) -> bytes:
        """Return the native-rate pcm16 of `text` spoken by `variant`."""
        if variant != self._voice:
            if self._lib.espeak_SetVoiceByName(variant.encode()) != _EE_OK:
                raise SpeechError(f"espeak-ng has no voice {variant!r}")
            self._voice = variant
        encoded = text.encode() + b"\0"
        self._chunks = []
        status = self._lib.espeak_Synth(encoded, len(encoded), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if status != _EE_OK:
            raise SpeechError(f"espeak_Synth failed ({status})")
        return b"".join(self._chunks)


_lock = threading.Lock()
_engine: _Espeak | None = None


def _get_engine() -> _Espeak:
    global _engine
    if _engine is None:
        try:
            _engine = _Espeak()
        except OSError as exc:
            raise SpeechError(f"cannot load espeak-ng: {exc}") from exc
    return _engine


def espeak_variant(voice: str) -> str:
    """The espeak-ng voice for an OpenAI voice name (VOICES), or for a custom voice id (a stable hash
    onto other variants); empty means alloy's."""
    name = voice.strip().lower()
    if not name:
        return _DEFAULT_VARIANT
    if name in VOICES:
        return VOICES[name]
    return _CUSTOM_VARIANTS[zlib.crc32(name.encode()) % len(_CUSTOM_VARIANTS)]


def synthesize(text: str, voice: str = "") -> bytes:
    """Speak `text` and return raw 24 kHz mono little-endian pcm16 (thread-safe, blocking)."""
    if not text.strip():
        return b""
    return _synthesize_variant(text, espeak_variant(voice))


# espeak-ng carries waveform state from one utterance to the next, so the same text comes out a
# few samples different each time; remembering recent answers makes a repeated request give the
# same audio (and skips the work).
@lru_cache(maxsize=32)
def _synthesize_variant(text: str, variant: str) -> bytes:
    with _lock:
        engine = _get_engine()
        native = engine.synth(text, variant)
        native_rate = engine.sample_rate
    samples = np.frombuffer(native, dtype="<i2")
    if native_rate == OUTPUT_SAMPLE_RATE:
        return samples.tobytes()
    if native_rate != 22_050:
        raise SpeechError(f"unexpected espeak-ng sample rate {native_rate}")
    return resample_22050_to_24000(samples, gain=_HEADROOM_GAIN).tobytes()


@cache
def _polyphase_filters() -> npt.NDArray[np.float64]:
    """One normalized windowed-sinc filter per output phase, shape (160, 2 * _HALF_TAPS)."""
    offsets = np.arange(-_HALF_TAPS + 1, _HALF_TAPS + 1)
    phases = (np.arange(_UP) * _DOWN % _UP) / _UP
    distance = offsets[None, :] - phases[:, None]
    # The Kaiser window evaluated at each tap's exact distance from the output instant.
    window = np.i0(_KAISER_BETA * np.sqrt(np.clip(1 - (distance / _HALF_TAPS) ** 2, 0, 1))) / np.i0(
        _KAISER_BETA
    )
    taps = _CUTOFF * np.sinc(_CUTOFF * distance) * window
    result: npt.NDArray[np.float64] = taps / taps.sum(axis=1, keepdims=True)
    return result


def resample_22050_to_24000(samples: npt.NDArray[np.int16], gain: float = 1.0) -> npt.NDArray[np.int16]:
    """Resample 22,050 Hz pcm16 samples to 24,000 Hz with a windowed-sinc polyphase filter."""
    count_out = len(samples) * _UP // _DOWN
    if count_out == 0:
        return np.zeros(0, dtype="<i2")
    filters = _polyphase_filters()
    padded = np.concatenate([np.zeros(_HALF_TAPS), samples.astype(np.float64), np.zeros(_HALF_TAPS + _DOWN)])
    windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * _HALF_TAPS)
    out = np.empty(count_out, dtype=np.float64)
    for phase in range(_UP):
        # Output n = 160 g + phase sits at input position 147 g + floor(147 phase / 160) + fraction.
        first_input = phase * _DOWN // _UP
        picked = windows[first_input + 1 :: _DOWN][: len(out[phase::_UP])]
        out[phase::_UP] = picked @ (filters[phase] * gain)
    return np.clip(np.rint(out), -32768, 32767).astype("<i2")
