"""Incremental decoder for the upstream's `text/event-stream` body.

The upstream sends only `data:` lines, but proxies and compatible servers add comments, `event:` and
`id:` lines, CRLF line ends and multi-line data: this follows the SSE spec closely enough for all of them
while staying cheap on the hot path (one `bytes.split` per network read, no per-character work).
"""

from __future__ import annotations

DONE = b"[DONE]"
# A real chunk is at most a few hundred kB (a 24 MB audio piece is 32 MB of base64); past this the upstream
# is broken, and holding more would let it grow the gateway's memory without bound.
MAX_EVENT_BYTES = 64 * 1024 * 1024


class EventTooLarge(ValueError):
    """An event (or a line) longer than the decoder's limit."""


class SSEDecoder:
    """Turns network reads into the `data` payloads of complete events, in order."""

    __slots__ = ("_data_bytes", "_data_lines", "_max_event_bytes", "_partial")

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self._partial = b""
        self._data_lines: list[bytes] = []
        self._data_bytes = 0
        self._max_event_bytes = max_event_bytes

    def feed(self, raw: bytes) -> list[bytes]:
        """Add bytes read from the network; return the data of every event they completed.

        Raises EventTooLarge once an unfinished event holds more than the limit.
        """
        if self._partial:
            raw = self._partial + raw
        lines = raw.split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) + self._data_bytes > self._max_event_bytes:
            raise EventTooLarge(f"an upstream event over {self._max_event_bytes} bytes")
        events: list[bytes] = []
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if self._data_lines:
                    events.append(b"\n".join(self._data_lines))
                    self._data_lines = []
                    self._data_bytes = 0
            elif line.startswith(b"data:"):
                value = line[5:]
                self._data_lines.append(value[1:] if value.startswith(b" ") else value)
                self._data_bytes += len(value)
                if self._data_bytes > self._max_event_bytes:
                    raise EventTooLarge(f"an upstream event over {self._max_event_bytes} bytes")
            # Comments (":"), "event:", "id:" and "retry:" carry nothing the normalizer needs.
        return events

    def close(self) -> list[bytes]:
        """Flush an event the stream ended without terminating with a blank line."""
        if self._partial:
            self.feed(b"\n")
        events = self.feed(b"\n") if self._data_lines else []
        self._partial = b""
        return events
