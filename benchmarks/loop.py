"""The event loop every benchmark process runs on: uvloop when installed, like `audiochat serve`.

The relay runs on the same loop as the gateway, so their difference is what the gateway does per event;
the simulator and the load generator share one core, so the leaner their loop the less they distort.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run `coroutine` to completion on a fresh loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coroutine)
