"""MP3 duration from its frame headers: a pure function, no decoding."""

from __future__ import annotations

from service.audio.wav import AudioFormatError

# MPEG audio frame header tables, indexed by version: 3 = MPEG-1, 2 = MPEG-2, 0 = MPEG-2.5.
_SAMPLE_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}
_BITRATES_KBPS = {
    (True, 1): (0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (True, 2): (0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (True, 3): (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (False, 1): (0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (False, 2): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (False, 3): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}


def _mpeg_frame(data: bytes, offset: int) -> tuple[int, int, int] | None:
    """Return (frame length, samples, sample rate) of a valid frame header at `offset`, else None."""
    if offset + 4 > len(data):
        return None
    b1, b2, b3 = data[offset + 1], data[offset + 2], data[offset + 3]
    if data[offset] != 0xFF or b1 & 0xE0 != 0xE0:
        return None
    version, layer_bits = (b1 >> 3) & 3, (b1 >> 1) & 3
    bitrate_index, rate_index = b2 >> 4, (b2 >> 2) & 3
    if version == 1 or layer_bits == 0 or bitrate_index in (0, 15) or rate_index == 3 or b3 & 3 == 2:
        return None  # reserved values, or free-format bitrate, which has no computable frame length
    layer = 4 - layer_bits
    mpeg1 = version == 3
    bitrate = _BITRATES_KBPS[(mpeg1, layer)][bitrate_index] * 1000
    rate = _SAMPLE_RATES[version][rate_index]
    padding = (b2 >> 1) & 1
    if layer == 1:
        return (12 * bitrate // rate + padding) * 4, 384, rate
    samples = 1152 if layer == 2 or mpeg1 else 576
    return samples // 8 * bitrate // rate + padding, samples, rate


def _skip_id3v2(data: bytes) -> int:
    """Return the offset just past any ID3v2 tags at the start of `data`."""
    offset = 0
    while data[offset : offset + 3] == b"ID3" and offset + 10 <= len(data):
        flags = data[offset + 5]
        size_bytes = data[offset + 6 : offset + 10]
        # The size is "syncsafe": 7 bits per byte.
        size = 0
        for byte in size_bytes:
            size = (size << 7) | (byte & 0x7F)
        offset += 10 + size + (10 if flags & 0x10 else 0)
    return offset


def _usable_frame(data: bytes, offset: int, first: bool) -> tuple[int, int, int] | None:
    """Return the frame at `offset` if it is whole and, for the first one, followed by another frame."""
    frame = _mpeg_frame(data, offset)
    if frame is None or offset + frame[0] > len(data):
        return None
    end = offset + frame[0]
    # Random bytes can look like one header; two in a row (or one filling the data) are an MP3.
    if first and end < len(data) and _mpeg_frame(data, end) is None:
        return None
    return frame


def mp3_duration_seconds(data: bytes) -> float:
    """Sum the durations of an MPEG audio stream's frames (after any ID3v2 tag); AudioFormatError if none."""
    offset = _skip_id3v2(data)
    seconds = 0.0
    frames = 0
    while offset >= 0 and offset + 4 <= len(data):
        frame = _usable_frame(data, offset, first=frames == 0)
        if frame is None:
            # Junk, a truncated frame or a false sync: resume at the next possible header.
            offset = data.find(b"\xff", offset + 1)
            continue
        length, samples, rate = frame
        seconds += samples / rate
        frames += 1
        offset += length
    if frames == 0:
        raise AudioFormatError("not an MP3 file: no valid MPEG audio frame found")
    return seconds
