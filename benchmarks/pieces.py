"""The pacing of a simulated answer and the layout of its audio pieces, shared by simulator and clients.

The gateway drops JSON fields it does not know, but relays audio bytes unchanged and one AudioDelta per
piece (pieces hold whole samples), so the send time travels inside the audio itself: every piece starts
with its send time (`time.time_ns()`, 8 bytes) and its index in the turn (4 bytes), then a fixed filler.
A client reads the stamp back for the latency and checks index and filler for lost or reordered bytes,
on every transport, without trusting the gateway's own numbers.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

SAMPLE_RATE_HZ = 24_000
BYTES_PER_SECOND = SAMPLE_RATE_HZ * 2
HEADER = struct.Struct("<QI")  # send time in ns, piece index
# A multiple of 3, so the base64 of the header and of the rest can be encoded (and spliced) separately.
HEADER_BYTES = HEADER.size
assert HEADER_BYTES % 3 == 0


@dataclass(frozen=True, slots=True)
class Pacing:
    """How the simulated model speaks: all answers of a run are alike."""

    first_chunk_seconds: float = 0.3  # request received to the first chunk (the model "thinking")
    audio_pieces_per_second: float = 15.0
    bytes_per_piece: int = 0  # 0: real time, BYTES_PER_SECOND / audio_pieces_per_second
    transcript_pieces_per_second: float = 5.0
    speech_seconds: float = 4.0

    @property
    def piece_bytes(self) -> int:
        """Bytes of pcm16 per audio piece: even (whole samples) and room for the header."""
        size = self.bytes_per_piece or round(BYTES_PER_SECOND / self.audio_pieces_per_second)
        return max(HEADER_BYTES + 2, size - size % 2)

    @property
    def audio_pieces(self) -> int:
        """Audio pieces per answer."""
        return max(1, round(self.speech_seconds * self.audio_pieces_per_second))

    @property
    def transcript_pieces(self) -> int:
        """Transcript pieces per answer (at least one, so every answer has text)."""
        return max(1, round(self.speech_seconds * self.transcript_pieces_per_second))

    @property
    def audio_seconds(self) -> float:
        """Seconds of speech one answer carries."""
        return self.audio_pieces * self.piece_bytes / BYTES_PER_SECOND

    def validated(self) -> Pacing:
        """Self, or a ValueError naming the bad value."""
        if self.audio_pieces_per_second <= 0 or self.transcript_pieces_per_second < 0:
            raise ValueError("pieces per second must be positive")
        if self.first_chunk_seconds < 0 or self.speech_seconds <= 0:
            raise ValueError("first_chunk_seconds must be >= 0 and speech_seconds > 0")
        return self


def filler(pacing: Pacing) -> bytes:
    """The constant tail of every piece: a recognisable ramp, so a shifted or mixed byte shows."""
    size = pacing.piece_bytes - HEADER_BYTES
    return (bytes(range(256)) * (size // 256 + 1))[:size]


class PieceChecker:
    """Reassembles one turn's audio into pieces; records each piece's latency and any byte out of place.

    Audio may arrive split or merged differently from how it was sent (an edge could re-chunk): pieces are
    cut from the byte stream by size, and a piece's latency is taken when its last byte arrived.
    """

    __slots__ = ("_filler", "_pending", "_size", "bad", "pieces")

    def __init__(self, pacing: Pacing, expected_filler: bytes) -> None:
        self._size = pacing.piece_bytes
        self._filler = expected_filler
        self._pending = bytearray()
        self.pieces = 0
        self.bad = 0  # pieces whose index or filler was wrong: lost, reordered or altered bytes

    def feed(self, data: bytes, received_ns: int, latencies_ns: list[int]) -> None:
        """Add audio bytes received at `received_ns` (time.time_ns()); append each piece's latency."""
        size = self._size
        if not self._pending and len(data) == size:
            self._piece(data, received_ns, latencies_ns)  # the usual case: one piece per delta, no copy
            return
        self._pending += data
        while len(self._pending) >= size:
            self._piece(bytes(self._pending[:size]), received_ns, latencies_ns)
            del self._pending[:size]

    def _piece(self, piece: bytes, received_ns: int, latencies_ns: list[int]) -> None:
        sent_ns, index = HEADER.unpack_from(piece)
        if index != self.pieces or piece[HEADER_BYTES:] != self._filler:
            self.bad += 1
        self.pieces += 1
        latencies_ns.append(received_ns - sent_ns)

    def complete(self, pacing: Pacing) -> bool:
        """Whether the turn delivered exactly its pieces, in order, unaltered."""
        return self.bad == 0 and not self._pending and self.pieces == pacing.audio_pieces
