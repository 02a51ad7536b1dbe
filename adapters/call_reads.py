"""Reading the core's stream from a task that can be cancelled, without leaking the read in flight.

grpc.aio frees a read's native memory only when the task awaiting the read consumes its result; a read
whose awaiting task is cancelled keeps it for good (grpc/grpc#43360). A client going away cancels
exactly that task, usually while it waits for the core's next event, and Starlette cancels through
anyio, whose cancellation hits every later await in the scope again. Measured on the edge (core and
edge in two processes, `python -m tests.soak_split --fault-rate 0 --pause-rate 0 --cancel-rate 0.3`):
about 20 KB kept per cancelled answer before, under 1 KB since; `python -m benchmarks.grpc_cancel_leak`
compares a cancelled read in flight with one settled here.

So each read runs in its own task; when the reader is cancelled, the call is cancelled first (Core then
completes the read at once) and the read is let finish, shielded and bounded, before the cancellation
goes on.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

import anyio
import grpc

# How long a cancelled call's read gets to finish. Core completes it as soon as the call is cancelled;
# a read still pending after this is cancelled anyway (its memory kept, no handler held up).
SETTLE_SECONDS = 1.0


async def read(call: Any) -> Any:
    """`call.read()`: the next response or `grpc.aio.EOF`; raises what the read raises.

    If this task is cancelled while the read is in flight, the call is cancelled and the read is let
    finish (see `settle`) before CancelledError goes on.
    """
    pending = asyncio.ensure_future(call.read())
    try:
        return await asyncio.shield(pending)
    except asyncio.CancelledError:
        await settle(call, pending)
        raise


async def read_with_heartbeats(call: Any, heartbeat_seconds: float) -> AsyncGenerator[Any, None]:
    """A gRPC call's responses, and None after each `heartbeat_seconds` without one (time for a comment).

    The pending read is kept across heartbeats, never cancelled: cancelling a grpc.aio read cancels the
    call. When the generator is closed or cancelled, the call is cancelled and the read settled.
    """
    pending = asyncio.ensure_future(call.read())
    try:
        while True:
            done, _ = await asyncio.wait((pending,), timeout=heartbeat_seconds)
            if not done:
                yield None  # the upstream is stalled: a comment keeps proxies from cutting the stream
                continue
            response = pending.result()
            if response is grpc.aio.EOF:
                return
            yield response
            pending = asyncio.ensure_future(call.read())
    finally:
        await settle(call, pending)


async def settle(call: Any, pending: asyncio.Future[Any], seconds: float = SETTLE_SECONDS) -> None:
    """Cancel `call`, then wait up to `seconds` for its read `pending` to finish; never raises from it.

    A read that finished is consumed here (so asyncio logs no "exception was never retrieved"); one that
    did not finish in time is cancelled. Shielded from anyio's repeated cancellation; a plain second
    cancellation of this task still ends the wait (the read is then cancelled).
    """
    call.cancel()
    try:
        if not pending.done():
            with anyio.CancelScope(shield=True):
                await asyncio.wait((pending,), timeout=seconds)
    finally:
        if not pending.done():
            pending.cancel()
        elif not pending.cancelled():
            pending.exception()
