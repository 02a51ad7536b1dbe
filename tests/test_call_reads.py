"""A reader of the core's stream cancelled mid-read lets its read finish first (adapters/call_reads.py).

grpc.aio keeps a read's native memory for good when the task awaiting it is cancelled (grpc/grpc#43360):
about 20 KB per client that left mid-answer on the edge. The memory itself is measured by the soak
(`python -m tests.soak_split`); what is tested here is the order that avoids it, against a real gRPC
server (the call wrapped to count reads whose awaiting task was cancelled): when the reader's
cancellation goes on, the call is cancelled, no read of it is left in flight and none was cancelled,
under asyncio's cancellation and under anyio's (Starlette's), which hits every later await again.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import aclosing
from typing import Any

import anyio
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from adapters.call_reads import read, read_with_heartbeats, settle


class _OneThenQuiet(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    """Health.Watch as one response, then nothing until cancelled: a reader then waits on a read."""

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Any) -> AsyncIterator[Any]:
        yield health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)
        await asyncio.Event().wait()


@pytest.fixture
async def stub() -> AsyncIterator[health_pb2_grpc.HealthStub]:
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(_OneThenQuiet(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield health_pb2_grpc.HealthStub(channel)
    finally:
        await server.stop(None)


class WatchedCall:
    """A real grpc.aio call, counting the reads whose awaiting task was cancelled (what leaks)."""

    def __init__(self, call: Any) -> None:
        self.call = call
        self.reads = 0  # reads started
        self.waiting = 0  # reads in flight
        self.awaiter_cancelled = 0  # reads that ended because the task awaiting them was cancelled

    async def read(self) -> Any:
        self.reads += 1
        self.waiting += 1
        try:
            return await self.call.read()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            # A read that ended because its call was cancelled raises CancelledError in a task nobody
            # cancelled; one whose awaiter was cancelled runs in a task with a cancellation pending.
            if task is not None and task.cancelling():
                self.awaiter_cancelled += 1
            raise
        finally:
            self.waiting -= 1

    def cancel(self) -> bool:
        return bool(self.call.cancel())

    def cancelled(self) -> bool:
        return bool(self.call.cancelled())


async def waiting_on_a_read(call: WatchedCall) -> None:
    """Returns once the reader has had the one response and waits on the next read."""
    async with asyncio.timeout(10):
        while call.reads < 2 or call.waiting != 1:  # noqa: ASYNC110 (the call has no event for it)
            await asyncio.sleep(0.01)


async def by_read(call: Any) -> None:
    await read(call)  # the one response
    await read(call)  # waits for good: cancelled here


async def by_heartbeats(call: Any) -> None:
    async with aclosing(read_with_heartbeats(call, heartbeat_seconds=0.05)) as events:
        async for _ in events:
            pass


READERS: dict[str, Callable[[Any], Coroutine[Any, Any, None]]] = {
    "read": by_read,
    "read_with_heartbeats": by_heartbeats,
}


@pytest.mark.parametrize("reader", READERS)
async def test_a_cancelled_task_leaves_no_read_in_flight(stub: Any, reader: str) -> None:
    call = WatchedCall(stub.Watch(health_pb2.HealthCheckRequest()))
    task = asyncio.create_task(READERS[reader](call))
    await waiting_on_a_read(call)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert call.cancelled()
    assert (call.waiting, call.awaiter_cancelled) == (0, 0)


@pytest.mark.parametrize("reader", READERS)
async def test_an_anyio_cancel_scope_leaves_no_read_in_flight(stub: Any, reader: str) -> None:
    """Starlette cancels a streamed body through anyio when its client disconnects."""
    call = WatchedCall(stub.Watch(health_pb2.HealthCheckRequest()))
    with anyio.CancelScope() as scope:

        async def cancel_when_waiting() -> None:
            await waiting_on_a_read(call)
            scope.cancel()

        watcher = asyncio.create_task(cancel_when_waiting())
        await READERS[reader](call)
    await watcher
    assert scope.cancelled_caught
    assert call.cancelled()
    assert (call.waiting, call.awaiter_cancelled) == (0, 0)


async def test_settle_gives_up_on_a_read_that_does_not_finish() -> None:
    """Bounded: a read the call's cancel does not end is cancelled after `seconds`."""

    class Stuck:
        cancelled = False

        def cancel(self) -> None:
            self.cancelled = True

    never = asyncio.ensure_future(asyncio.Event().wait())
    call = Stuck()
    await settle(call, never, seconds=0.05)
    assert call.cancelled
    await asyncio.sleep(0)
    assert never.cancelled()
