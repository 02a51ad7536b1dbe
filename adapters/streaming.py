"""A streamed HTTP response whose body generator is closed as soon as the response ends, however it ends.

Starlette cancels the body's task when the client disconnects, but a body generator suspended at a
`yield` (its chunk waiting on a full socket) is left to the garbage collector, so its `finally`, which
cancels the gRPC call and with it the upstream, runs whenever the collector gets to it. Here it runs
before the response returns.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send


class ClosingStreamingResponse(StreamingResponse):
    """A StreamingResponse that closes its async-generator body when it ends, is cancelled or fails."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # Starlette's task group has ended, so the generator runs in no other task: no "already running".
            if isinstance(self.body_iterator, AsyncGenerator):
                await self.body_iterator.aclose()
