"""Audio: what clients send decoded for the model, what the model says encoded for clients (PyAV).

Pure functions and small stateful codecs, no I/O: `wav` and `mp3` read headers, `sniff` names a container
from its first bytes, `decode` turns any accepted file or streamed recording into 24 kHz mono pcm16, and
`encode` turns the answer's pcm16 into Opus, AAC, MP3, FLAC or WAV as it arrives.
"""

from service.audio.mp3 import mp3_duration_seconds
from service.audio.wav import (
    MODEL_SAMPLE_RATE,
    AudioFormatError,
    WavInfo,
    parse_wav,
    pcm16_duration_ms,
    wav_header,
    wrap_pcm16_as_wav,
)

__all__ = [
    "MODEL_SAMPLE_RATE",
    "AudioFormatError",
    "WavInfo",
    "mp3_duration_seconds",
    "parse_wav",
    "pcm16_duration_ms",
    "wav_header",
    "wrap_pcm16_as_wav",
]
