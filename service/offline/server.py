"""Runs the offline voice in-process on a loopback ephemeral port."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator
from types import TracebackType

import uvicorn

from service.offline.app import OfflineVoiceSettings, OfflineVoiceStats, create_app

logger = logging.getLogger(__name__)

_START_TIMEOUT_SECONDS = 5.0
_GRACEFUL_SHUTDOWN_SECONDS = 1


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves the host process's signal handlers alone."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The gateway owns SIGINT/SIGTERM and stops this server itself.
        yield


class OfflineVoiceServer:
    """The offline voice on http://127.0.0.1:<ephemeral>/v1, started and stopped with the caller's loop."""

    def __init__(self, settings: OfflineVoiceSettings | None = None, host: str = "127.0.0.1") -> None:
        self._app = create_app(settings)
        self._host = host
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._base_url = ""

    @property
    def base_url(self) -> str:
        """The OpenAI base URL (`http://127.0.0.1:PORT/v1`); empty until started."""
        return self._base_url

    @property
    def stats(self) -> OfflineVoiceStats:
        """The app's request counters."""
        stats: OfflineVoiceStats = self._app.state.stats
        return stats

    async def start(self) -> str:
        """Bind a free loopback port, start serving, and return the base URL."""
        if self._task is not None:
            return self._base_url
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((self._host, 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._app,
            log_config=None,  # never reconfigure the host process's logging
            access_log=False,
            lifespan="off",
            ws="none",
            timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN_SECONDS,
        )
        self._server = _EmbeddedServer(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="offline-voice")
        try:
            async with asyncio.timeout(_START_TIMEOUT_SECONDS):
                while not self._server.started:
                    if self._task.done():
                        self._task.result()  # raises why it failed
                        raise RuntimeError("the offline voice server stopped while starting")
                    await asyncio.sleep(0.005)
        except BaseException:
            sock.close()
            with contextlib.suppress(Exception):
                await self.stop()
            raise
        self._base_url = f"http://{self._host}:{port}/v1"
        logger.info("offline voice listening on %s", self._base_url)
        return self._base_url

    async def stop(self) -> None:
        """Stop serving, end open responses within a second, and wait for every task it started."""
        server, task = self._server, self._task
        self._server, self._task, self._base_url = None, None, ""
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

    async def __aenter__(self) -> OfflineVoiceServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()
