"""The gRPC server: options, health, reflection, and a graceful drain."""

from __future__ import annotations

import asyncio
import logging

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from audiochat.v1 import audiochat_pb2 as pb
from service import keepalive, metrics
from service.api_keys import ApiKeys
from service.conversation_resume import ResumeSettings
from service.grpc_auth import ApiKeyInterceptor
from service.listen import listen_error
from service.registration import add_servicer
from service.servicer import AudioChatServicer
from service.settings import Settings
from service.state.conversations import ConversationStore, MemoryConversationStore
from service.state.conversations_redis import RedisConversationStore
from service.upstream import Upstream

log = logging.getLogger(__name__)

CUT_SECONDS = 1.0  # after the grace, how long cut calls get to send their status before gRPC cancels them
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["AudioChatService"].full_name
HEALTH_SERVICE_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


def conversation_store(settings: Settings) -> ConversationStore:
    """Redis when AUDIOCHAT_REDIS_URL is set (any replica resumes), else this process's memory."""
    if settings.redis_url:
        return RedisConversationStore(
            settings.redis_url, settings.redis_timeout_seconds, settings.conversation_ttl_seconds
        )
    store = MemoryConversationStore(
        settings.conversation_ttl_seconds,
        settings.max_stored_conversations,
        settings.max_stored_conversation_bytes,
    )
    # What it holds explains a core's memory; the gauges read the store a process serves with.
    metrics.CONVERSATION_STORE_BYTES.set_function(lambda: store.bytes)
    metrics.CONVERSATION_STORE_CONVERSATIONS.set_function(lambda: len(store))
    return store


def resume_settings(settings: Settings) -> ResumeSettings:
    """How this server keeps conversations for a resume."""
    return ResumeSettings(
        store=conversation_store(settings),
        orphan_seconds=settings.conversation_orphan_seconds,
        turn_log_bytes=settings.conversation_turn_log_bytes,
        fail_without_store=settings.redis_unavailable == "fail",
    )


def server_options(settings: Settings) -> list[tuple[str, int]]:
    """Channel arguments: message sizes, keepalive, and connection age for rebalancing."""
    options = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        # Pings keep idle conversations alive through NATs and load balancers and find dead peers.
        *keepalive.server_options(settings),
        ("grpc.so_reuseport", 0),
    ]
    if settings.max_connection_age_seconds > 0:
        # After a scale-out, long-lived channels reconnect and spread over the new replicas; running
        # streams get the drain grace to finish.
        options += [
            ("grpc.max_connection_age_ms", int(settings.max_connection_age_seconds * 1000)),
            ("grpc.max_connection_age_grace_ms", int(settings.drain_seconds * 1000)),
        ]
    return options


class AudioChatServer:
    """grpc.aio server hosting AudioChatService, health checking and reflection."""

    def __init__(self, settings: Settings, upstream: Upstream) -> None:
        self.settings = settings
        self.servicer = AudioChatServicer(
            upstream,
            defaults=settings.defaults,
            limits=settings.limits,
            max_streams=settings.max_streams,
            max_conversations=settings.max_conversations,
            resume=resume_settings(settings),
        )
        self.health = health.aio.HealthServicer()
        keys = ApiKeys.from_settings(settings)
        interceptors = [] if keys.open else [ApiKeyInterceptor(keys)]
        self._server = grpc.aio.server(options=server_options(settings), interceptors=interceptors)
        add_servicer(self.servicer, self._server)  # bytes that are not protobuf: INVALID_ARGUMENT
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, HEALTH_SERVICE_NAME, reflection.SERVICE_NAME), self._server
        )
        self.port = 0
        self._stopped = False

    async def start(self) -> int:
        """Bind and start serving; return the bound port (useful when the setting is 0)."""
        bind, port = self.settings.bind, self.settings.grpc_port
        try:
            # grpc gives no reason (its RuntimeError points at GRPC_VERBOSITY); the runner probed the port
            # just before, so this is a race lost to another process or an address not on this host.
            self.port = self._server.add_insecure_port(f"{bind}:{port}")
        except RuntimeError:
            self.port = 0
        if self.port == 0:
            raise listen_error("grpc_port", bind, port, "address in use or not on this host")
        await self._server.start()
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("gRPC service listening", extra={"port": self.port, "service": SERVICE_NAME})
        return self.port

    async def stop(self, deadline: float | None = None) -> None:
        """Drain until `deadline` (loop time; default: the drain grace from now), then cut what remains.

        At once: NOT_SERVING and new calls refused UNAVAILABLE. Running turns may finish until the deadline;
        idle conversations are ended UNAVAILABLE so their clients reconnect elsewhere. Calls still running
        at the deadline end UNAVAILABLE ("drain grace is over").
        """
        if self._stopped:
            return
        self._stopped = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.drain_seconds if deadline is None else deadline
        self.servicer.admission.draining = True
        await self.health.enter_graceful_shutdown()
        log.info("draining", extra={"grace_seconds": round(max(0.0, deadline - loop.time()), 3)})
        drain = asyncio.create_task(self.servicer.drain())
        try:
            async with asyncio.timeout_at(deadline):
                await self.servicer.idle.wait()
        except TimeoutError:
            log.warning(
                "drain grace over: ending calls UNAVAILABLE", extra={"calls": self.servicer.active_streams}
            )
            await self.servicer.cut(CUT_SECONDS)
        drain.cancel()
        await asyncio.wait([drain])
        await self.servicer.end_orphans(CUT_SECONDS)
        await self._server.stop(grace=CUT_SECONDS)
        await self.servicer.close_store()
        log.info("stopped")

    async def wait_for_termination(self) -> None:
        """Return when the server has stopped."""
        await self._server.wait_for_termination()
