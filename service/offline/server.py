"""Runs the offline voice in-process on a loopback ephemeral port."""

from __future__ import annotations

import logging
from types import TracebackType

from service.embedded_http import EmbeddedHTTPServer
from service.offline.app import OfflineVoiceSettings, OfflineVoiceStats, create_app

logger = logging.getLogger(__name__)

WS_MAX_SIZE = 16 * 1024 * 1024  # bytes of one WebSocket message; larger ones close the socket (1009)


class OfflineVoiceServer:
    """The offline voice on http://127.0.0.1:<ephemeral>/v1, started and stopped with the caller's loop."""

    def __init__(self, settings: OfflineVoiceSettings | None = None, host: str = "127.0.0.1") -> None:
        self._app = create_app(settings)
        self._host = host
        # The Realtime face's WebSocket beside the HTTP routes; the API takes events up to 15 MiB.
        self._http = EmbeddedHTTPServer(self._app, host=host, ws="websockets-sansio", ws_max_size=WS_MAX_SIZE)
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

    @property
    def realtime_sessions(self) -> int:
        """Realtime WebSocket sessions open now."""
        sessions: int = self._app.state.realtime.open_sessions
        return sessions

    async def start(self) -> str:
        """Bind a free loopback port, start serving, and return the base URL."""
        port = await self._http.start()
        self._base_url = f"http://{self._host}:{port}/v1"
        logger.info("offline voice listening on %s", self._base_url)
        return self._base_url

    async def stop(self) -> None:
        """Stop serving, end open responses within a second, and wait for every task it started."""
        self._base_url = ""
        await self._http.stop()

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
