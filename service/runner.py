"""`audiochat serve`: compose the upstream, the gRPC service and (by role) the edge, until a signal."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from contextlib import AsyncExitStack

from adapters.edge_server import EdgeServer
from service import memory_report, metrics
from service.embedded_http import EmbeddedHTTPServer
from service.listen import listen_error, probe_all, reason
from service.server import AudioChatServer
from service.settings import Settings
from service.upstream_registry import open_upstream

log = logging.getLogger(__name__)
CORE_POLL_SECONDS = 1.0  # how often an edge whose core is not ready checks again


async def _ready_when_the_core_is(edge: EdgeServer) -> None:
    """Log "ready" once the core answers SERVING; until then say, once, that it does not and why."""
    warned = False
    while (problem := await edge.core_problem()) is not None:
        if not warned:
            log.warning(
                "audiochat edge started, but not ready",
                extra={"reason": problem, "http_port": edge.port, "core": edge.target, "readyz": 503},
            )
            warned = True
        await asyncio.sleep(CORE_POLL_SECONDS)
    log.info("audiochat edge ready", extra={"http_port": edge.port, "core": edge.target})


async def serve(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Run the role's servers until SIGTERM or SIGINT (or `stop` is set), then drain."""
    # A taken port is reported before anything starts (ListenError: one line, exit status 2).
    probe_all(settings)
    stop = stop or asyncio.Event()
    metrics.watch_gc()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    memory_report.install(loop)  # SIGUSR1 writes a memory report, when AUDIOCHAT_MEMORY_REPORT says where
    if settings.role == "edge":
        # The edge serves /metrics on its own HTTP port.
        async with EdgeServer(settings, settings.core_target) as edge:
            announce = asyncio.create_task(_ready_when_the_core_is(edge))
            gc.freeze()  # as below
            await stop.wait()
            announce.cancel()
        return
    async with open_upstream(settings) as upstream, AsyncExitStack() as started:
        # Whatever started is stopped again, in reverse order, also when a later port fails to bind.
        metrics_endpoint = EmbeddedHTTPServer(
            metrics.asgi_app(), host=settings.bind, port=settings.metrics_port
        )
        try:
            await metrics_endpoint.start()
        except OSError as exc:
            raise listen_error("metrics_port", settings.bind, settings.metrics_port, reason(exc)) from None
        started.push_async_callback(metrics_endpoint.stop)
        log.info("metrics at /metrics", extra={"metrics_port": metrics_endpoint.port})
        # Started after the metrics endpoint, so it drains while metrics can still be scraped.
        server = AudioChatServer(settings, upstream)
        await server.start()
        started.push_async_callback(server.stop)
        # Role all: the edge reaches the core over loopback; both drain together on SIGTERM.
        local_edge = EdgeServer(settings, f"127.0.0.1:{server.port}") if settings.role == "all" else None
        if local_edge is not None:
            await local_edge.start()
            started.push_async_callback(local_edge.stop)
        log.info(
            "audiochat ready",
            extra={
                "upstream": settings.upstream_kind,
                "model": settings.default_model,
                "role": settings.role,
                "grpc_port": server.port,
                "http_port": local_edge.port if local_edge is not None else None,
            },
        )
        # What start-up allocated (modules, descriptors, the SDK's models) lives as long as the process:
        # out of the collector's sight, full collections scan only what turns allocate (make bench).
        gc.freeze()
        await stop.wait()
        # One grace for the whole process: the core refuses new calls at once, beside the edge's drain.
        # (The exit stack's stops then find both already stopped.)
        deadline = asyncio.get_running_loop().time() + settings.drain_seconds
        stopping = [server.stop(deadline)]
        if local_edge is not None:
            stopping.append(local_edge.stop(deadline))
        await asyncio.gather(*stopping)
