"""`POST /v1/turns` and `GET /v1/turns/{turn_id}/events`: one turn as server-sent events, resumable.

The StreamTurn call is read into the turn's resume buffer by a task of its own, so a dropped connection
neither stops the turn nor loses events: the client reconnects with Last-Event-ID and gets the rest
from the buffer. The model is called once per turn, whatever the number of reconnects.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from adapters.call_reads import read
from adapters.context import EdgeContext, edge_of, transport_metadata
from adapters.http_body import BodyError, is_multipart, read_form, read_json
from adapters.resume import TurnLog
from adapters.resume_store import Followable, StoreUnavailable
from adapters.sse import HEARTBEAT, MEDIA_TYPE, SSE_HEADERS, encode_error, encode_turn_event, parse_event_id
from adapters.status import (
    EdgeError,
    bad_request,
    edge_error,
    from_rpc_error,
    shutting_down,
    store_unavailable,
    unauthenticated,
)
from adapters.streaming import ClosingStreamingResponse
from adapters.turn_request import RequestError, from_form, from_json
from audiochat.v1 import audiochat_pb2 as pb
from service import metrics
from service.api_keys import AUTHORIZATION, bearer_token

log = logging.getLogger(__name__)


def error_response(error: EdgeError) -> JSONResponse:
    """A failure before the stream started: a status and {"error": {"code", "message"}}."""
    return JSONResponse(error.body(), error.http_status, headers=error.headers())


async def post_turn(request: Request) -> Response:
    """Start a turn (or, with Last-Event-ID, resume one) and stream its events."""
    edge = edge_of(request)
    if not edge.keys.accepts_headers(request.headers):
        return error_response(unauthenticated())
    key = bearer_token(request.headers.get(AUTHORIZATION, ""))
    last_event_id = request.headers.get("last-event-id")
    if last_event_id:
        return await _resume(edge, last_event_id, None, key)
    if edge.draining:
        return error_response(shutting_down())
    try:
        if is_multipart(request):
            form = await read_form(request, edge.settings.max_body_bytes)
            try:
                turn = await from_form(form)
            finally:
                await form.close()  # uploads past 1 MB were spooled to temporary files
        else:
            turn = from_json(await read_json(request, edge.settings.max_body_bytes))
    except (BodyError, RequestError) as exc:
        return error_response(exc.error)
    started = await _start(edge, turn, key)
    if isinstance(started, EdgeError):
        return error_response(started)
    return _stream(edge, started, after=0)


async def get_events(request: Request) -> Response:
    """A turn's events after Last-Event-ID (all of them without it), while the turn is buffered."""
    edge = edge_of(request)
    if not edge.keys.accepts_headers(request.headers):
        return error_response(unauthenticated())
    turn_id = request.path_params["turn_id"]
    key = bearer_token(request.headers.get(AUTHORIZATION, ""))
    return await _resume(edge, request.headers.get("last-event-id") or f"{turn_id}:0", turn_id, key)


async def _resume(edge: EdgeContext, last_event_id: str, turn_id: str | None, key: str | None) -> Response:
    parsed = parse_event_id(last_event_id)
    if parsed is None or (turn_id is not None and parsed[0] != turn_id):
        return error_response(
            bad_request("Last-Event-ID must be an id of this turn's events (<turn_id>:<n>)")
        )
    try:
        buffered = await edge.store.find(parsed[0], parsed[1], key)
    except StoreUnavailable as exc:
        metrics.RESUMES.labels("unavailable").inc()
        return error_response(store_unavailable(exc.message, exc.retry_after_ms))
    # Another key's turn is answered exactly like an unknown one: its existence is not for them to learn.
    if buffered is None:
        metrics.RESUMES.labels("not_found").inc()
        seconds = f"{edge.settings.resume_seconds:g}"
        message = (
            f"turn {parsed[0]} cannot be resumed after event {parsed[1]}: unknown, or over {seconds} s old"
        )
        return error_response(edge_error("not_found", message, 404, 1008))
    metrics.RESUMES.labels("resumed").inc()
    return _stream(edge, buffered, after=parsed[1])


async def _start(edge: EdgeContext, turn: pb.StreamTurnRequest, key: str | None) -> TurnLog | EdgeError:
    """Call StreamTurn and wait for TurnStarted (the upstream accepted): before it, a failure is a status."""
    try:
        await edge.store.admit()  # a store known to be down refuses before the model is called
    except StoreUnavailable as exc:
        return store_unavailable(exc.message, exc.retry_after_ms)
    call = edge.stub.StreamTurn(turn, metadata=transport_metadata("sse", key))
    try:
        first = await read(call)  # cancelled: the call is cancelled too
    except grpc.aio.AioRpcError as exc:
        return from_rpc_error(exc)
    if first is grpc.aio.EOF:
        return edge_error("internal", "the service ended the turn without events", 500, 1011)
    # With keys, only the key that started the turn may resume it.
    try:
        buffered = await edge.store.open(first.turn_id, owner=None if edge.keys.open else key)
    except StoreUnavailable as exc:
        call.cancel()  # nothing was sent yet: the turn ends upstream and the client is told to retry
        return store_unavailable(exc.message, exc.retry_after_ms)
    except asyncio.CancelledError:
        call.cancel()
        raise
    buffered.append(encode_turn_event(first))
    pump = asyncio.create_task(_pump(edge, call, buffered), name=f"sse:{first.turn_id}")
    buffered.on_abandoned = pump.cancel
    edge.pumps.add(pump)
    pump.add_done_callback(edge.pumps.discard)
    return buffered


async def _pump(edge: EdgeContext, call: Any, buffered: TurnLog) -> None:
    try:
        while (event := await read(call)) is not grpc.aio.EOF:
            buffered.append(encode_turn_event(event), time.perf_counter())
            # A slow reader slows the core's stream (and the upstream) instead of growing this buffer.
            await edge.store.wait_for_room(buffered)
    except grpc.aio.AioRpcError as exc:
        error = from_rpc_error(exc)
        buffered.append(encode_error(buffered.turn_id, buffered.last_sequence + 1, error.fields()))
    except asyncio.CancelledError:
        # Abandoned by its client, or the edge is stopping past its drain grace: end the turn upstream.
        call.cancel()
        if buffered.abandoned:
            log.info("turn %s abandoned: no client came back; stopped upstream", buffered.turn_id)
            return
        error = shutting_down()
        buffered.append(encode_error(buffered.turn_id, buffered.last_sequence + 1, error.fields()))
        raise
    finally:
        buffered.finish()


def _stream(edge: EdgeContext, buffered: Followable, after: int) -> ClosingStreamingResponse:
    return ClosingStreamingResponse(
        _follow(edge, buffered, after), media_type=MEDIA_TYPE, headers=SSE_HEADERS
    )


async def _follow(edge: EdgeContext, buffered: Followable, after: int) -> AsyncIterator[bytes]:
    relay = metrics.edge_relay("sse")
    with edge.stream():
        async for data in buffered.follow(after, edge.settings.heartbeat_seconds, relay):
            yield data or HEARTBEAT
