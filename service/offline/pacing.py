"""Pacing of the offline voice's audio, so a test or a demo can hear it arrive like a live model's."""

from __future__ import annotations

import asyncio
import time

from service.audio import pcm16_duration_ms


class Pacer:
    """Holds audio back so that it leaves no faster than `realtime_factor` times playback speed."""

    def __init__(self, realtime_factor: float) -> None:
        self._factor = realtime_factor
        self._start = time.monotonic()
        self._sent_seconds = 0.0

    async def before_sending(self, audio_bytes: int) -> None:
        """Wait until the audio sent so far has had its time, then count `audio_bytes` (pcm16) as sent."""
        if self._factor > 0:
            due = self._start + self._sent_seconds / self._factor
            await asyncio.sleep(max(0.0, due - time.monotonic()))
        self._sent_seconds += pcm16_duration_ms(audio_bytes) / 1000
