"""Which container a file is, from its first bytes: names and content types lie, magic numbers do not."""

from __future__ import annotations

from typing import Literal

Container = Literal["wav", "mp3", "m4a", "ogg", "webm", "flac", "aac"]

# How many bytes `sniff` needs to decide (an MP4 `ftyp` box name sits at offset 4).
SNIFF_BYTES = 12

# Demuxer of each container, named so FFmpeg never guesses among the hundreds it could open.
DEMUXERS: dict[Container, str] = {
    "wav": "wav",
    "mp3": "mp3",
    "m4a": "mov,mp4,m4a,3gp,3g2,mj2",
    "ogg": "ogg",
    "webm": "matroska,webm",
    "flac": "flac",
    "aac": "aac",
}

# Recognised but refused, so the error can say what the file is.
_UNSUPPORTED = {b"#!AMR": "amr", b"caff": "caf", b"FORM": "aiff", b".snd": "au", b"MThd": "midi"}


def sniff(head: bytes) -> Container | None:
    """The container whose signature `head` (a file's first SNIFF_BYTES or more) starts with, else None."""
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav"
    if head[4:8] == b"ftyp":
        return "m4a"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "webm"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:3] == b"ID3":
        return "mp3"
    if len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        # MPEG audio and ADTS share the sync word; ADTS has layer bits 00, which MPEG audio reserves.
        return "aac" if head[1] & 0x06 == 0 else "mp3"
    return None


def describe_unsupported(head: bytes) -> str:
    """A name for a file `sniff` refused: a known format's name, or what its first bytes look like."""
    for magic, name in _UNSUPPORTED.items():
        if head.startswith(magic):
            return f"{name} audio"
    return f"unrecognised data starting with {head[:8].hex(' ')}"
