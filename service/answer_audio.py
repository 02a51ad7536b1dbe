"""The answer's pcm16 AudioDeltas re-encoded into the format the turn asked for, as they arrive.

Positions keep counting 24 kHz source samples (see AudioDelta in the proto), so barge-in, `played_ms` and
TurnCompleted.audio_samples mean the same whatever the encoding.
"""

from __future__ import annotations

from audiochat.v1 import audiochat_pb2 as pb
from service.audio.encode import Encoder
from service.turn_input import OUTPUT_ENCODINGS


class AnswerEncoder:
    """Turns one answer's pcm16 deltas into encoded deltas: a header delta first, a flush delta last."""

    def __init__(self, output_format: pb.AudioFormat) -> None:
        self._format = output_format
        self._encoder = Encoder(OUTPUT_ENCODINGS[output_format.encoding], output_format.bitrate_bps)
        self._started = False
        self._accounted = 0  # source samples covered by the deltas handed out

    def feed(self, pcm: pb.AudioDelta) -> list[pb.AudioDelta]:
        """Encoded deltas for the next pcm16 delta: none while the codec still waits for a whole frame."""
        deltas = self._start()
        data = self._encoder.encode(pcm.data)
        if data:
            deltas.append(self._delta(data))
        return deltas

    def _start(self) -> list[pb.AudioDelta]:
        if self._started:
            return []
        self._started = True
        header = self._encoder.header()
        return [self._delta(header)] if header else []

    def finish(self) -> list[pb.AudioDelta]:
        """The codec's last frames, once the answer ended; nothing if it never spoke."""
        if not self._started:
            self._encoder.close()
            return []
        data = self._encoder.flush()
        pending = self._encoder.samples_in - self._accounted
        return [self._delta(data)] if data or pending else []

    def close(self) -> None:
        """Free the codec (an interrupted answer needs no flush)."""
        self._encoder.close()

    def _delta(self, data: bytes) -> pb.AudioDelta:
        start, self._accounted = self._accounted, self._encoder.samples_in
        return pb.AudioDelta(
            data=data, format=self._format, start_sample=start, samples=self._accounted - start
        )
