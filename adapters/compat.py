"""`POST /v1/chat/completions`: OpenAI-compatible answers from StreamTurn; client code changes base_url only.

Streaming answers keep the upstream's chunk shapes but normalized: audio pieces hold whole samples (pcm16)
or whole codec frames (any other `audio.format`, encoded by the core), and
every answer ends with a finish_reason chunk (the upstream often omits it). The audio id, known to the
core only at the end, arrives with `expires_at` in the last audio chunk. Non-streaming answers carry the
whole file: a wav made here from the pcm16 (with its real sizes), or the core's encoded deltas joined.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import replace
from typing import Any

import grpc
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from adapters.call_reads import read, read_with_heartbeats
from adapters.compat_request import CompatError, CompatRequest, parse
from adapters.context import EdgeContext, cancelled_on_cut, cut_by_the_edge, edge_of, transport_metadata
from adapters.event_json import reason_name
from adapters.http_body import BodyError, read_json
from adapters.sse import HEARTBEAT, MEDIA_TYPE, SSE_HEADERS
from adapters.status import (
    EdgeError,
    edge_error,
    from_rpc_error,
    from_turn_error,
    shutting_down,
    unauthenticated,
)
from adapters.streaming import ClosingStreamingResponse
from adapters.tool_json import call_json
from audiochat.v1 import audiochat_pb2 as pb
from service import metrics
from service.api_keys import AUTHORIZATION, bearer_token
from service.audio import wrap_pcm16_as_wav
from service.offline import wire
from service.usage import to_upstream as usage_to_upstream

# finish_reason values OpenAI uses; an interrupted answer (the client went away) never reaches a client here.
_FINISH_REASONS = {
    "stop": "stop",
    "length": "length",
    "content_filter": "content_filter",
    "tool_calls": "tool_calls",
}


# The core's own deadline on the upstream is 10 s; this bounds a core that does not answer at all.
MODELS_DEADLINE_SECONDS = 15.0


def compat_error(exc: grpc.aio.AioRpcError) -> EdgeError:
    """The core's status in this route's terms: the field it names is the core's (`config.tool_choice`,
    `history`), so it is renamed to what this client sent (`tool_choice`, `messages`). An upstream's own
    `param` is left as the upstream wrote it."""
    error = from_rpc_error(exc)
    if error.upstream is not None or not error.param:
        return error
    return replace(error, param=compat_param(error.param))


def compat_param(field: str) -> str:
    """`config.extra_body.seed` -> `seed`, `config.tools[0].function.parameters_json` ->
    `tools[0].function.parameters`, `history[2]...` / `input...` -> `messages` (the route builds both
    from it)."""
    for prefix in ("config.extra_body.", "config."):
        if field.startswith(prefix):
            return field.removeprefix(prefix).replace(".parameters_json", ".parameters")
    if field.startswith(("history", "input")):
        return "messages"
    return field


def error_response(error: EdgeError, param: str | None = None) -> JSONResponse:
    """OpenAI's error shape and status: the SDKs raise their usual exceptions and honour retry-after-ms."""
    body = error.openai_body()
    if param is not None:
        body["error"]["param"] = param
    return JSONResponse(body, error.http_status, headers=error.headers())


async def chat_completions(request: Request) -> Response:
    """Run one turn and answer as Chat Completions would."""
    edge = edge_of(request)
    if not edge.keys.accepts_headers(request.headers):
        return error_response(unauthenticated("Incorrect API key provided."))
    if edge.draining:
        return error_response(shutting_down())
    try:
        parsed = parse(await read_json(request, edge.settings.max_body_bytes))
    except BodyError as exc:
        return error_response(exc.error)
    except CompatError as exc:
        return error_response(exc.error, exc.param)
    key = bearer_token(request.headers.get(AUTHORIZATION, ""))
    call = edge.stub.StreamTurn(parsed.turn, metadata=transport_metadata("openai", key))
    try:
        first = await read(call)  # cancelled: the call is cancelled too
    except grpc.aio.AioRpcError as exc:
        return error_response(compat_error(exc))
    if first is grpc.aio.EOF or not first.HasField("started"):
        call.cancel()
        return error_response(edge_error("internal", "the service sent no turn", 500, 1011))
    ident = wire.StreamIdentity(
        id="chatcmpl-" + first.turn_id.removeprefix("turn_"),
        created=int(time.time()),
        model=first.started.model or parsed.model,
        system_fingerprint=None,  # the core does not relay the upstream's: unknown, not the offline voice's
    )
    if parsed.stream:
        chunks = _stream(call, parsed, ident, edge)
        return ClosingStreamingResponse(chunks, media_type=MEDIA_TYPE, headers=SSE_HEADERS)
    with edge.stream(), cancelled_on_cut(edge, call):
        return await _whole_unless_gone(request, call, parsed, ident)


async def _whole_unless_gone(
    request: Request, call: Any, parsed: CompatRequest, ident: wire.StreamIdentity
) -> Response:
    """The whole answer; a client that gives up first ends the turn, and so the upstream stream, at once
    (uvicorn does not cancel a handler whose client went away, so the answer would run to its end)."""
    answer = asyncio.ensure_future(_whole(call, parsed, ident))
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({answer, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not answer.done():
            call.cancel()
            answer.cancel()
            await asyncio.wait({answer})
    if answer.cancelled():
        return Response(status_code=499)  # nobody reads it: the client is gone
    return answer.result()


async def _disconnected(request: Request) -> None:
    """Returns when the client closes its connection; the body was read, so nothing else arrives."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def list_models(request: Request) -> Response:
    """`GET /v1/models`: the upstream's models, or the configured one when the upstream has no list."""
    edge = edge_of(request)
    if not edge.keys.accepts_headers(request.headers):
        return error_response(unauthenticated("Incorrect API key provided."))
    key = bearer_token(request.headers.get(AUTHORIZATION, ""))
    try:
        answer = await edge.stub.ListModels(
            pb.ListModelsRequest(),
            metadata=transport_metadata("openai", key),
            timeout=MODELS_DEADLINE_SECONDS,
        )
    except grpc.aio.AioRpcError as exc:
        return error_response(compat_error(exc))
    data = []
    for model in answer.models:
        entry: wire.Json = {"id": model.id, "object": "model"}
        if model.HasField("created"):
            entry["created"] = model.created
        if model.HasField("owned_by"):
            entry["owned_by"] = model.owned_by
        data.append(entry)
    return JSONResponse({"object": "list", "data": data})


def _usage(usage: pb.Usage | None) -> wire.Json | None:
    """The upstream's usage as it sent it; null when it sent none (never invented zeros)."""
    return None if usage is None else usage_to_upstream(usage)


def _audio_chunk_parts(ident: wire.StreamIdentity) -> tuple[bytes, bytes]:
    """What surrounds the base64 of an audio piece: the chunk is built by concatenation, not by json.dumps."""
    marker = "\x00"
    text = wire.sse_event(wire.chunk(ident, {"audio": {"data": marker}})).decode()
    before, _, after = text.partition(json.dumps(marker)[1:-1])
    return before.encode(), after.encode()


async def _stream(
    call: Any, parsed: CompatRequest, ident: wire.StreamIdentity, edge: EdgeContext
) -> AsyncIterator[bytes]:
    head, tail = _audio_chunk_parts(ident)
    relay = metrics.edge_relay("openai")
    usage: pb.Usage | None = None
    with edge.stream(), cancelled_on_cut(edge, call):
        try:
            # Sent with the first event: an answer that opens with a tool call opens as the upstream's does.
            opening: wire.Json | None = (
                wire.role_chunk(ident) if parsed.wants_audio else wire.text_role_chunk(ident)
            )
            async with aclosing(read_with_heartbeats(call, edge.settings.heartbeat_seconds)) as events:
                async for event in events:
                    if event is None:
                        yield HEARTBEAT
                        continue
                    received_at = time.perf_counter()
                    kind = event.WhichOneof("event")
                    if opening is not None and kind in ("audio", "text", "tool_call", "completed"):
                        if kind == "tool_call":
                            piece = _tool_call_piece(event.tool_call)
                            delta: wire.Json = {"role": "assistant", "content": None, "refusal": None}
                            delta["tool_calls"] = [piece]
                            yield wire.sse_event(wire.chunk(ident, delta))
                            opening = None
                            continue
                        yield wire.sse_event(opening)
                        opening = None
                    if kind == "audio":
                        yield head + base64.b64encode(event.audio.data) + tail
                        relay.observe(time.perf_counter() - received_at)
                    elif kind == "text":
                        if event.text.source == pb.TEXT_SOURCE_TRANSCRIPT:
                            yield wire.sse_event(wire.transcript_chunk(ident, event.text.text))
                        else:
                            yield wire.sse_event(wire.content_chunk(ident, event.text.text))
                        relay.observe(time.perf_counter() - received_at)
                    elif kind == "tool_call":
                        yield wire.sse_event(
                            wire.chunk(ident, {"tool_calls": [_tool_call_piece(event.tool_call)]})
                        )
                        relay.observe(time.perf_counter() - received_at)
                    elif kind == "usage":
                        usage = event.usage
                    elif kind == "completed":
                        for chunk in _ending(ident, event.completed, usage, parsed.include_usage):
                            yield wire.sse_event(chunk)
                        if event.completed.reason == pb.FINISH_REASON_ERROR:
                            return  # like the upstream: an error frame, then the stream ends without [DONE]
            yield wire.SSE_DONE
        except grpc.aio.AioRpcError as exc:
            yield _error_chunk(compat_error(exc))
            yield wire.SSE_DONE
        except asyncio.CancelledError:
            if not cut_by_the_edge(call):
                raise  # the client went away: nobody to tell
            yield _error_chunk(shutting_down())
            yield wire.SSE_DONE
        finally:
            call.cancel()  # a client that went away ends the turn upstream at once


def _tool_call_piece(delta: pb.ToolCallDelta) -> wire.Json:
    """A piece of delta.tool_calls as the upstream writes it: the first with id, type and name."""
    if not delta.id:
        return {"index": delta.index, "function": {"arguments": delta.arguments}}
    function = {"name": delta.name, "arguments": delta.arguments}
    return {"index": delta.index, "id": delta.id, "type": "function", "function": function}


def _error_chunk(error: EdgeError) -> bytes:
    """An error chunk in OpenAI's shape, for a call that failed after the stream started."""
    return wire.sse_event(error.openai_body())


def _ending(
    ident: wire.StreamIdentity, done: pb.TurnCompleted, usage: pb.Usage | None, include_usage: bool
) -> list[wire.Json]:
    if done.reason == pb.FINISH_REASON_ERROR:
        error = from_turn_error(done.error)
        if done.error.HasField("upstream"):
            return [error.openai_body()]  # the upstream's error frame, as it sent it
        kind = done.error.upstream_code or "server_error"
        return [wire.error_object(error.message, kind, None, done.error.upstream_code or error.code)]
    chunks: list[wire.Json] = []
    if done.audio_id:
        chunks.append(
            wire.chunk(ident, {"audio": {"id": done.audio_id, "expires_at": done.audio_expires_at}})
        )
    chunks.append(wire.finish_chunk(ident, _FINISH_REASONS.get(reason_name(done.reason), "stop")))
    if include_usage and usage is not None:
        chunks.append(wire.usage_chunk(ident, usage_to_upstream(usage)))
    return chunks


async def _whole(call: Any, parsed: CompatRequest, ident: wire.StreamIdentity) -> Response:
    text: list[str] = []
    audio = bytearray()
    usage: pb.Usage | None = None
    done: pb.TurnCompleted | None = None
    try:
        while (event := await read(call)) is not grpc.aio.EOF:
            kind = event.WhichOneof("event")
            if kind == "audio":
                audio += event.audio.data
            elif kind == "text":
                text.append(event.text.text)
            elif kind == "usage":
                usage = event.usage
            elif kind == "completed":
                done = event.completed
    except grpc.aio.AioRpcError as exc:
        return error_response(compat_error(exc))
    except asyncio.CancelledError:
        if not cut_by_the_edge(call):
            raise
        return error_response(shutting_down())
    finally:
        call.cancel()
    if done is None:
        return error_response(edge_error("internal", "the turn ended without completing", 500, 1011))
    if done.reason == pb.FINISH_REASON_ERROR:
        return error_response(from_turn_error(done.error))
    if parsed.wants_audio and (done.audio_id or audio):
        data = wrap_pcm16_as_wav(bytes(audio)) if parsed.audio_format == "wav" else bytes(audio)
        message = wire.audio_message(done.audio_id, data, done.audio_expires_at, done.transcript)
    else:
        message = wire.text_message("".join(text))
    if done.tool_calls:
        message["tool_calls"] = [call_json(call) for call in done.tool_calls]
        if not message["content"]:
            message["content"] = None  # as the upstream writes a message that only calls tools
    finish = _FINISH_REASONS.get(reason_name(done.reason), "stop")
    body = wire.completion_body(ident, message, _usage(usage), finish)
    del body["service_tier"]  # the upstream's is not relayed: leave it out rather than invent "default"
    return JSONResponse(body)
