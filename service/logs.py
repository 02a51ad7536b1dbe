"""Structured logging: one JSON object per line, so log pipelines need no parsing rules."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

# Attributes every LogRecord has; anything else was passed with `extra=` and belongs in the line.
# uvicorn's `color_message` duplicates `message` with terminal escapes.
_STANDARD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "color_message"}


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line with its `extra` fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{record.msecs:03.0f}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRIBUTES:
                line[key] = value
        if record.exc_info:
            line["traceback"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


# uvicorn says these once per server, and a process runs up to three (offline voice, metrics, edge).
_PROCESS_MESSAGES = ("Started server process", "Finished server process")
_said: set[str] = set()


def _once_per_process(record: logging.LogRecord) -> bool:
    """Let uvicorn's process-level lines through the first time only."""
    if record.name != "uvicorn.error" or not isinstance(record.msg, str):
        return True
    prefix = next((m for m in _PROCESS_MESSAGES if record.msg.startswith(m)), None)
    if prefix is None:
        return True
    if prefix in _said:
        return False
    _said.add(prefix)
    return True


def configure(level: str) -> None:
    """Send every logger to stderr as JSON lines at `level`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(_once_per_process)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's access log would repeat what the per-turn line says, without the timings.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    # The SDK's HTTP client logs every upstream request at INFO; the turn line already has it.
    logging.getLogger("httpx2").setLevel(logging.WARNING)
