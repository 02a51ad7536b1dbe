"""Runs an ASGI app under uvicorn inside the caller's event loop (offline voice, edge, test servers)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import uvicorn

START_TIMEOUT_SECONDS = 5.0


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves the host process's signal handlers alone."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The process owns SIGINT/SIGTERM and stops this server itself, in its drain order.
        yield


class EmbeddedHTTPServer:
    """One ASGI app on host:port (port 0 picks a free one); started and stopped with the caller's loop."""

    def __init__(self, app: Any, *, host: str = "127.0.0.1", port: int = 0, **options: Any) -> None:
        self._app = app
        self._host = host
        self._port = port
        self._options = {
            "log_config": None,  # never reconfigure the host process's logging
            "access_log": False,
            "lifespan": "off",
            "timeout_graceful_shutdown": 1,
            **options,
        }
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None
        self.port = 0

    async def start(self) -> int:
        """Bind, start serving, and return the bound port."""
        if self._task is not None:
            return self.port
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self._host, self._port))
        except OSError:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        self._server = _EmbeddedServer(uvicorn.Config(self._app, **self._options))
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name=f"http:{self.port}")
        try:
            async with asyncio.timeout(START_TIMEOUT_SECONDS):
                while not self._server.started:
                    if self._task.done():
                        self._task.result()  # raises why it failed
                        raise RuntimeError(f"the HTTP server on port {self.port} stopped while starting")
                    await asyncio.sleep(0.005)
        except BaseException:
            sock.close()
            with contextlib.suppress(Exception):
                await self.stop()
            raise
        return self.port

    async def stop(self) -> None:
        """Stop serving, end open responses within the graceful timeout, and wait for the tasks it started."""
        server, task = self._server, self._task
        self._server, self._task = None, None
        if server is None or task is None:
            return
        server.should_exit = True
        try:
            await task
        finally:
            # uvicorn cancels responses that outlive the graceful timeout but does not wait for them.
            leftovers = list(server.server_state.tasks)
            if leftovers:
                await asyncio.gather(*leftovers, return_exceptions=True)

    async def __aenter__(self) -> EmbeddedHTTPServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.stop()
