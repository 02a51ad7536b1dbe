"""Clients of the HTTP edge (SSE `POST /v1/turns`, WebSocket `/v1/converse`, `POST /v1/chat/completions`).

Used only once the edge has landed in git: until then the benchmark skips these transports and says why.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable

from benchmarks.load import Transport
from benchmarks.processes import REPO, Gateway

EdgeFactory = Callable[[str, int, Gateway | None], Transport]
EDGE_TRANSPORTS: dict[str, EdgeFactory] = {}


def edge_available() -> tuple[bool, str]:
    """Whether the edge is committed and clients for it exist here; if not, why not."""
    try:
        landed = subprocess.run(
            ["git", "log", "-1", "--format=%h", "--", "adapters/edge_server.py"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except OSError:
        landed = ""
    if not landed:
        return False, "the edge (adapters/) has not landed in git yet"
    if not EDGE_TRANSPORTS:
        return False, "the edge has landed but this benchmark has no clients for it yet"
    return True, ""
