"""Incremental decoder for the upstream's `text/event-stream` body.

The upstream sends only `data:` lines, but proxies and compatible servers add comments, `event:` and
`id:` lines, CRLF line ends and multi-line data: this follows the SSE spec closely enough for all of them
while staying cheap on the hot path (one `bytes.split` per network read, no per-character work).
"""

from __future__ import annotations

DONE = b"[DONE]"


class SSEDecoder:
    """Turns network reads into the `data` payloads of complete events, in order."""

    __slots__ = ("_data_lines", "_partial")

    def __init__(self) -> None:
        self._partial = b""
        self._data_lines: list[bytes] = []

    def feed(self, raw: bytes) -> list[bytes]:
        """Add bytes read from the network; return the data of every event they completed."""
        if self._partial:
            raw = self._partial + raw
        lines = raw.split(b"\n")
        self._partial = lines.pop()
        events: list[bytes] = []
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if self._data_lines:
                    events.append(b"\n".join(self._data_lines))
                    self._data_lines = []
            elif line.startswith(b"data:"):
                value = line[5:]
                self._data_lines.append(value[1:] if value.startswith(b" ") else value)
            # Comments (":"), "event:", "id:" and "retry:" carry nothing the normalizer needs.
        return events

    def close(self) -> list[bytes]:
        """Flush an event the stream ended without terminating with a blank line."""
        if self._partial:
            self.feed(b"\n")
        events = self.feed(b"\n") if self._data_lines else []
        self._partial = b""
        return events
