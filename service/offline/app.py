"""The offline voice's HTTP face: `POST /v1/chat/completions` speaking OpenAI's wire format."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal

from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.audio import pcm16_duration_ms, wrap_pcm16_as_wav
from service.offline import wire
from service.offline.answer import compose_answer
from service.offline.audio_ids import DEFAULT_MAX_IDS, DEFAULT_TTL_SECONDS, AudioIdStore
from service.offline.chat_request import (
    ChatRequest,
    OpenAIError,
    audio_tokens,
    parse_chat_request,
    text_tokens,
)
from service.offline.pacing import Pacer
from service.offline.realtime_response import Voice
from service.offline.realtime_session import RealtimeEndpoint, RealtimeLimits
from service.offline.speech import SpeechError, synthesize
from service.offline.tools import (
    PlannedCall,
    call_message_json,
    plan_tool_call,
    preamble,
    speak_results,
    tool_call_chunks,
    tool_results,
)

logger = logging.getLogger(__name__)

_ENCODED_FORMATS = ("wav", "pcm16")
_SSE = "text/event-stream"
_BAD_JSON = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your "
    "HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)"
)
_SERVER_ERROR = "The server had an error while processing your request. Sorry about that!"
# Generous constant limits: the offline voice never rate-limits, but clients read these headers.
_RATE_LIMIT_HEADERS = {
    "x-ratelimit-limit-requests": "10000",
    "x-ratelimit-remaining-requests": "9999",
    "x-ratelimit-reset-requests": "6ms",
    "x-ratelimit-limit-tokens": "30000000",
    "x-ratelimit-remaining-tokens": "29999000",
    "x-ratelimit-reset-tokens": "2ms",
}


@dataclass(frozen=True)
class OfflineVoiceSettings:
    """How the offline voice answers."""

    # Audio streamed at this multiple of playback speed (1.0 = like a live model); 0 = unpaced.
    realtime_factor: float = 0.0
    # Real captures most often end without any finish_reason; others send a "stop" chunk just before
    # or just after the expires_at chunk. "" (none), "before_expires" or "after_expires".
    finish_reason_chunk: Literal["", "before_expires", "after_expires"] = ""
    audio_id_ttl_seconds: float = DEFAULT_TTL_SECONDS
    max_audio_ids: int = DEFAULT_MAX_IDS
    piece_ms: tuple[int, ...] = wire.DEFAULT_PIECE_MS
    realtime_limits: RealtimeLimits = field(default_factory=RealtimeLimits)


@dataclass
class OfflineVoiceStats:
    """Counters for tests and diagnostics."""

    requests: int = 0
    streams_completed: int = 0
    streams_abandoned: int = 0
    errors: dict[str, int] = field(default_factory=dict)


class _OpenAIHeaders:
    """Adds x-request-id and rate-limit headers to every response, as OpenAI does."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = wire.new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["x-request-id"] = request_id
                for name, value in _RATE_LIMIT_HEADERS.items():
                    headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)


class _ChatCompletions:
    """The endpoint: validate, compose the answer, speak it, and send it in OpenAI's shapes."""

    def __init__(self, settings: OfflineVoiceSettings, stats: OfflineVoiceStats) -> None:
        self.settings = settings
        self.stats = stats
        self.audio_ids = AudioIdStore(settings.audio_id_ttl_seconds, settings.max_audio_ids)

    async def handle(self, request: Request) -> Response:
        """Answer one chat completion request."""
        self.stats.requests += 1
        try:
            body = await _json_body(request)
            chat = parse_chat_request(body, self.audio_ids.is_valid)
            if chat.wants_audio and not chat.stream and chat.audio_format not in _ENCODED_FORMATS:
                raise OpenAIError(
                    f"The offline voice encodes wav and pcm16 only, not '{chat.audio_format}'; "
                    "use a real OpenAI upstream for other formats.",
                    "audio.format",
                    "unsupported_value",
                )
            assert isinstance(body, dict)  # parse_chat_request refused anything else
            results = tool_results(body["messages"])
            call = None if results else plan_tool_call(body, chat.user_text)
        except OpenAIError as exc:
            key = exc.code or exc.type
            self.stats.errors[key] = self.stats.errors.get(key, 0) + 1
            return JSONResponse(exc.body(), status_code=exc.status)
        if call is not None:
            if chat.stream:
                return StreamingResponse(self._counted(self._call_events(chat, call)), media_type=_SSE)
            return _call_completion(chat, call)
        if results:
            answer = speak_results(results)
        else:
            answer = compose_answer(chat.user_text, chat.user_audio_seconds)
        if chat.stream:
            return StreamingResponse(self._counted(self._stream_events(chat, answer)), media_type=_SSE)
        return await self._complete(chat, answer)

    async def _complete(self, chat: ChatRequest, answer: str) -> Response:
        ident = wire.StreamIdentity.new(chat.model)
        if not chat.wants_audio:
            usage = _usage(chat, answer, 0)
            return JSONResponse(wire.completion_body(ident, wire.text_message(answer), usage))
        try:
            pcm = await asyncio.to_thread(synthesize, answer, chat.voice)
        except SpeechError:
            logger.exception("offline voice synthesis failed")
            return JSONResponse(wire.error_object(_SERVER_ERROR), status_code=500)
        audio_id, expires_at = self.audio_ids.issue()
        data = wrap_pcm16_as_wav(pcm) if chat.audio_format == "wav" else pcm
        message = wire.audio_message(audio_id, data, expires_at, answer)
        return JSONResponse(wire.completion_body(ident, message, _usage(chat, answer, len(pcm))))

    async def _counted(self, events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        finished = False
        try:
            async for event in events:
                yield event
            finished = True
        finally:
            # A client that goes away cancels this generator: nothing more is synthesized or sent.
            if finished:
                self.stats.streams_completed += 1
            else:
                self.stats.streams_abandoned += 1
                logger.debug("offline voice stream abandoned by its client")

    async def _stream_events(self, chat: ChatRequest, answer: str) -> AsyncIterator[bytes]:
        ident = wire.StreamIdentity.new(chat.model, obfuscate=chat.include_obfuscation)
        if not chat.wants_audio:
            usage = _usage(chat, answer, 0) if chat.include_usage else None
            for body in wire.text_answer_chunks(ident, answer, usage):
                yield wire.sse_event(body)
            yield wire.SSE_DONE
            return
        audio_id, expires_at = self.audio_ids.issue()
        # The transcript runs ahead of the audio, as in real streams: it leaves before synthesis.
        for body in wire.audio_head_chunks(ident, audio_id, answer):
            yield wire.sse_event(body)
        try:
            pcm = await asyncio.to_thread(synthesize, answer, chat.voice)
        except SpeechError:
            logger.exception("offline voice synthesis failed")
            # Like a real upstream failing mid-stream: an error frame and no [DONE].
            yield wire.sse_event(wire.error_object(_SERVER_ERROR))
            return
        usage = _usage(chat, answer, len(pcm)) if chat.include_usage else None
        finish = "stop" if self.settings.finish_reason_chunk else None
        before = self.settings.finish_reason_chunk == "before_expires"
        pieces = wire.pcm_pieces(pcm, self.settings.piece_ms)
        pacer = Pacer(self.settings.realtime_factor)
        for body in wire.audio_tail_chunks(ident, audio_id, pieces, expires_at, usage, finish, before):
            await pacer.before_sending(wire.audio_bytes_in(body))
            yield wire.sse_event(body)
        yield wire.SSE_DONE

    async def _call_events(self, chat: ChatRequest, call: PlannedCall) -> AsyncIterator[bytes]:
        """A spoken preamble (when audio is asked for), then the call, as a real model streams them."""
        ident = wire.StreamIdentity.new(chat.model, obfuscate=chat.include_obfuscation)
        said, pcm = "", b""
        if chat.wants_audio:
            said = preamble(call)
            audio_id, expires_at = self.audio_ids.issue()
            for body in wire.audio_head_chunks(ident, audio_id, said):
                yield wire.sse_event(body)
            try:
                pcm = await asyncio.to_thread(synthesize, said, chat.voice)
            except SpeechError:
                logger.exception("offline voice synthesis failed")
                yield wire.sse_event(wire.error_object(_SERVER_ERROR))
                return
            pacer = Pacer(self.settings.realtime_factor)
            pieces = wire.pcm_pieces(pcm, self.settings.piece_ms)
            for body in wire.audio_tail_chunks(ident, audio_id, pieces, expires_at):
                await pacer.before_sending(wire.audio_bytes_in(body))
                yield wire.sse_event(body)
        for body in tool_call_chunks(ident, call, opening=not chat.wants_audio):
            yield wire.sse_event(body)
        if chat.include_usage:
            yield wire.sse_event(wire.usage_chunk(ident, _usage(chat, said + call.arguments, len(pcm))))
        yield wire.SSE_DONE


def _call_completion(chat: ChatRequest, call: PlannedCall) -> Response:
    """A non-streamed answer that only calls the tool (no speech, as models usually answer)."""
    ident = wire.StreamIdentity.new(chat.model)
    message = {
        "role": "assistant",
        "content": None,
        "refusal": None,
        "tool_calls": [call_message_json(call)],
        "annotations": [],
    }
    usage = _usage(chat, call.arguments, 0)
    return JSONResponse(wire.completion_body(ident, message, usage, "tool_calls"))


def _usage(chat: ChatRequest, answer: str, pcm_bytes: int) -> wire.Json:
    """Token counts: the transcript's text tokens plus ten audio tokens per second of speech."""
    seconds = pcm16_duration_ms(pcm_bytes) / 1000
    return wire.usage_dict(
        chat.prompt_text_tokens, chat.prompt_audio_tokens, text_tokens(answer), audio_tokens(seconds)
    )


async def _json_body(request: Request) -> object:
    try:
        return json.loads(await request.body())
    except ValueError as exc:
        raise OpenAIError(_BAD_JSON) from exc


async def _http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    if status == 404:
        message = f"Invalid URL ({request.method} {request.url.path})"
    elif status == 405:
        message = f"Method {request.method} is not allowed on {request.url.path}."
    else:
        message = _SERVER_ERROR
    error_type = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse(wire.error_object(message, error_type), status_code=status)


def create_app(settings: OfflineVoiceSettings | None = None) -> Starlette:
    """Return the offline voice's ASGI app (Chat Completions over HTTP, the Realtime API over WebSocket);
    its counters are at `app.state.stats`, its Realtime endpoint at `app.state.realtime`."""
    settings = settings or OfflineVoiceSettings()
    stats = OfflineVoiceStats()
    endpoint = _ChatCompletions(settings, stats)
    realtime = RealtimeEndpoint(Voice(settings.realtime_factor, settings.piece_ms), settings.realtime_limits)
    app = Starlette(
        routes=[
            Route("/v1/chat/completions", endpoint.handle, methods=["POST"]),
            WebSocketRoute("/v1/realtime", realtime.serve),
        ],
        exception_handlers={HTTPException: _http_error, Exception: _http_error},
    )
    app.add_middleware(_OpenAIHeaders)
    app.state.stats = stats
    app.state.realtime = realtime
    return app
