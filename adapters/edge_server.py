"""The edge as a server: a channel to the core, the ASGI app under uvicorn, and a drain on stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import TracebackType

import grpc

from adapters.app import core_problem, create_app
from adapters.auth import ApiKeys, Origins
from adapters.context import EdgeContext
from adapters.resume import ResumeStore
from adapters.resume_redis import RedisResumeStore
from adapters.resume_store import TurnStore
from service import keepalive, metrics
from service.embedded_http import EmbeddedHTTPServer
from service.listen import listen_error, reason
from service.redis_client import connect
from service.server import CUT_SECONDS
from service.settings import Settings

log = logging.getLogger(__name__)


def channel_options(settings: Settings) -> list[tuple[str, int]]:
    """The core's message sizes, and keepalive so a dead core is noticed between turns."""
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        *keepalive.channel_options(settings),
    ]


def resume_store(settings: Settings) -> TurnStore:
    """The SSE resume store: this process's memory, or Redis when AUDIOCHAT_REDIS_URL is set."""
    if not settings.redis_url:
        return ResumeStore(
            keep_seconds=settings.resume_seconds,
            max_bytes=settings.resume_buffer_bytes,
            orphan_seconds=settings.sse_orphan_seconds,
            max_turn_bytes=settings.sse_turn_buffer_bytes,
        )
    return RedisResumeStore(
        connect(settings.redis_url, settings.redis_timeout_seconds),
        keep_seconds=settings.resume_seconds,
        max_bytes=settings.resume_buffer_bytes,
        orphan_seconds=settings.sse_orphan_seconds,
        max_turn_bytes=settings.sse_turn_buffer_bytes,
        timeout_seconds=settings.redis_timeout_seconds,
        fail_when_down=settings.redis_unavailable == "fail",
    )


class EdgeServer:
    """HTTP and WebSocket on `settings.bind:settings.http_port`, calling the core at `target`."""

    def __init__(self, settings: Settings, target: str) -> None:
        self.settings = settings
        self.target = target
        self.context: EdgeContext | None = None
        self._http: EmbeddedHTTPServer | None = None
        self.port = 0

    async def start(self) -> int:
        """Open the channel, bind, serve; return the bound port."""
        settings = self.settings
        keys = ApiKeys.from_settings(settings)
        if keys.open:
            log.warning("no AUDIOCHAT_API_KEYS: the edge accepts every request that reaches it")
        channel = grpc.aio.insecure_channel(self.target, options=channel_options(settings))
        store = resume_store(settings)
        self.context = EdgeContext(settings, channel, keys, Origins(settings.allowed_origins), store)
        # One edge per process outside tests: the gauges read the store that started last.
        metrics.SSE_RESUME_BYTES.set_function(lambda: store.bytes)
        metrics.SSE_RESUME_TURNS.set_function(lambda: len(store))
        self._http = EmbeddedHTTPServer(
            create_app(self.context),
            host=settings.bind,
            port=settings.http_port,
            ws="websockets-sansio",
            ws_max_size=settings.ws_max_message_bytes,
            ws_per_message_deflate=False,  # pcm16 does not compress; deflate would only cost CPU
            timeout_keep_alive=max(1, int(min(settings.idle_timeout_seconds, 75))),
        )
        try:
            self.port = await self._http.start()
        except OSError as exc:
            await channel.close()
            await store.close()
            raise listen_error("http_port", settings.bind, settings.http_port, reason(exc)) from None
        except BaseException:
            await channel.close()
            await store.close()
            raise
        if isinstance(store, RedisResumeStore) and (problem := await store.probe()) is not None:
            log.warning(
                "Redis unreachable at start: SSE turns are not resumable on other pods until it answers",
                extra={"error": problem, "redis_unavailable": settings.redis_unavailable},
            )
        log.info(
            "edge listening",
            extra={
                "port": self.port,
                "core": self.target,
                "open": keys.open,
                "resume_store": "redis" if settings.redis_url else "memory",
            },
        )
        return self.port

    async def core_problem(self) -> str | None:
        """Why the core cannot take work now, or None when it answers SERVING (as /readyz checks)."""
        if self.context is None:
            return "edge not started"
        return await core_problem(self.context)

    async def stop(self, deadline: float | None = None) -> None:
        """Refuse new work, let running streams end until `deadline` (loop time; default: the drain grace
        from now), then end the rest, each told why in its protocol, and close everything."""
        context, http = self.context, self._http
        if context is None or http is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.drain_seconds if deadline is None else deadline
        context.drain.set()
        pumps = set(context.pumps)
        try:
            async with asyncio.timeout_at(deadline):
                await context.idle.wait()
                await asyncio.gather(*pumps, return_exceptions=True)
        except TimeoutError:
            log.warning(
                "drain grace over: ending the remaining streams", extra={"streams": context.active_streams}
            )
            # SSE gets an error event (its pump appends it), compat an error chunk and [DONE], WebSocket 1012.
            context.cut.set()
            for call in list(context.calls):
                call.cancel()
            for pump in list(context.pumps):
                pump.cancel()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CUT_SECONDS):
                    await context.idle.wait()
        for pump in list(context.pumps):
            pump.cancel()
        await asyncio.gather(*context.pumps, return_exceptions=True)
        await context.store.close()  # the last events and end markers reach Redis (bounded)
        await http.stop()
        await context.channel.close()
        self.context, self._http = None, None

    async def __aenter__(self) -> EdgeServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.stop()
