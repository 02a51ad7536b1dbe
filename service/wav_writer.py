"""A WAV file written while the audio streams in: sizes are patched when it closes."""

from __future__ import annotations

import struct
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from service.audio import MODEL_SAMPLE_RATE, wav_header

RIFF_SIZE_OFFSET = 4
DATA_SIZE_OFFSET = 40


class StreamingWavWriter:
    """Writes pcm16 as it arrives, so a player can open the file before the answer ends."""

    def __init__(self, path: Path, sample_rate: int = MODEL_SAMPLE_RATE) -> None:
        self._file: BinaryIO = path.open("wb")
        # Sizes are unknown until the end; zero now, patched in close().
        self._file.write(wav_header(0, sample_rate))
        self.data_bytes = 0

    def write(self, pcm: bytes) -> None:
        """Append samples."""
        self._file.write(pcm)
        self.data_bytes += len(pcm)

    def close(self) -> None:
        """Patch the RIFF and data sizes and close the file."""
        if self._file.closed:
            return
        self._file.seek(RIFF_SIZE_OFFSET)
        self._file.write(struct.pack("<I", 36 + self.data_bytes))
        self._file.seek(DATA_SIZE_OFFSET)
        self._file.write(struct.pack("<I", self.data_bytes))
        self._file.close()

    def __enter__(self) -> StreamingWavWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
