"""The edge's ASGI app: routes, CORS, health, readiness and metrics over one EdgeContext."""

from __future__ import annotations

from pathlib import Path

from grpc_health.v1 import health_pb2
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from adapters import compat, websocket
from adapters.context import EdgeContext, edge_of
from adapters.status import unreachable_reason
from adapters.turns import get_events, post_turn
from service import metrics as service_metrics
from service.server import SERVICE_NAME

READY_CHECK_SECONDS = 1.0
STATIC = Path(__file__).parent / "static"


async def healthz(request: Request) -> Response:
    """Alive: the process answers."""
    return PlainTextResponse("ok")


async def readyz(request: Request) -> Response:
    """Ready only while the core answers SERVING and this edge is not draining."""
    edge = edge_of(request)
    if edge.draining:
        return PlainTextResponse("draining", 503)
    problem = await core_problem(edge)
    return PlainTextResponse("ready") if problem is None else PlainTextResponse(problem, 503)


async def core_problem(edge: EdgeContext) -> str | None:
    """Why the core cannot take work now ("core not reachable: ...", "core not serving"), or None."""
    try:
        check = health_pb2.HealthCheckRequest(service=SERVICE_NAME)
        answer = await edge.health.Check(check, timeout=READY_CHECK_SECONDS)
    except Exception as exc:  # any failure to reach the core means not ready, never a 500
        return f"core not reachable: {unreachable_reason(exc)}"
    if answer.status != health_pb2.HealthCheckResponse.SERVING:
        return "core not serving"
    return None


async def metrics(request: Request) -> Response:
    """The edge's own metrics; in an edge-only process also the process's (python_info, process_*),
    which otherwise the core's metrics port serves: scraping both never counts anything twice."""
    edge: EdgeContext = request.app.state.edge
    body, content_type = service_metrics.edge_exposition(with_process=edge.settings.role == "edge")
    return Response(body, media_type=content_type)


async def page(request: Request) -> Response:
    """The push-to-talk web page (its scripts and worklets are under /static)."""
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


def create_app(edge: EdgeContext) -> Starlette:
    """The app; CORS only when cross-origin pages are allowed (AUDIOCHAT_ALLOWED_ORIGINS)."""
    middleware = []
    if edge.origins.any or edge.origins.allowed:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=["*"] if edge.origins.any else sorted(edge.origins.allowed),
                allow_methods=["GET", "POST"],
                allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
                expose_headers=["Retry-After", "retry-after-ms"],
                max_age=600,
            )
        )
    app = Starlette(
        routes=[
            Route("/v1/turns", post_turn, methods=["POST"]),
            Route("/v1/turns/{turn_id}/events", get_events, methods=["GET"]),
            Route("/v1/chat/completions", compat.chat_completions, methods=["POST"]),
            Route("/v1/models", compat.list_models, methods=["GET"]),
            WebSocketRoute("/v1/converse", websocket.converse),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/", page, methods=["GET"]),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
        middleware=middleware,
        exception_handlers={404: _not_found},
    )
    app.state.edge = edge
    return app


async def _not_found(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": {"code": "not_found", "message": f"no route {request.url.path}"}}, 404)
