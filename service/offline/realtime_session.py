"""The offline voice's Realtime face: one WebSocket session at `/v1/realtime` speaking the Realtime API.

The client events it takes and what it answers (GA names; the openai SDK's `realtime.connect` speaks it):

- session.update -> session.updated (instructions, voice, output_modalities, tools, tool_choice,
  max_output_tokens, audio formats, turn_detection; see realtime_config for what it refuses);
- conversation.item.create / delete / retrieve / truncate -> conversation.item.added + done / deleted /
  retrieved / truncated;
- response.create -> response.created ... response.done; response.cancel stops the response at once
  (response.done status cancelled, reason client_cancelled);
- input_audio_buffer.append / commit / clear -> committed / cleared; under server VAD (the default, as in
  the API) appended audio goes through the Silero detector: speech_started (which interrupts an answer),
  speech_stopped, committed, and a response;
- anything else, or anything malformed, gets an `error` event naming it; the session goes on.

Bounded: `RealtimeLimits` caps open sessions (one more gets an `error` event session_limit_reached and
close code 1013), a session's length (an `error` session_expired, then the socket closes), the input
audio buffer (an append past it gets an error and is dropped) and the conversation (oldest items dropped,
like the API's `truncation: auto`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from service.offline.realtime_config import RealtimeError, SessionConfig, response_params
from service.offline.realtime_conversation import (
    DEFAULT_MAX_CHARS,
    DEFAULT_MAX_ITEMS,
    Conversation,
    Item,
    check_item,
    prompt_of,
)
from service.offline.realtime_events import Json, error_event, event, new_id, pcm_ms
from service.offline.realtime_response import RealtimeResponse, SocketGone, Voice
from service.pass_through import json_problem
from service.vad import silero
from service.vad.listener import Utterance, VoiceListener
from service.vad.segmenter import SpeechStarted

logger = logging.getLogger(__name__)

SAMPLE_RATE_HZ = 24_000
MIN_COMMIT_MS = 100  # the API refuses to commit less
MAX_EVENT_DEPTH = 32  # nesting of one event (tool schemas included)
SERVER_ERROR = "The server had an error while processing your request. Sorry about that!"
# Which fields each client event may carry besides `type` and `event_id`.
CLIENT_EVENTS: dict[str, frozenset[str]] = {
    "session.update": frozenset({"session"}),
    "conversation.item.create": frozenset({"item", "previous_item_id"}),
    "conversation.item.delete": frozenset({"item_id"}),
    "conversation.item.retrieve": frozenset({"item_id"}),
    "conversation.item.truncate": frozenset({"item_id", "content_index", "audio_end_ms"}),
    "response.create": frozenset({"response"}),
    "response.cancel": frozenset({"response_id"}),
    "input_audio_buffer.append": frozenset({"audio"}),
    "input_audio_buffer.commit": frozenset(),
    "input_audio_buffer.clear": frozenset(),
    "output_audio_buffer.clear": frozenset(),
}


@dataclass(frozen=True)
class RealtimeLimits:
    """Bounds of the Realtime face, each with its documented answer when reached."""

    max_sessions: int = 64
    max_session_seconds: float = 3600.0  # the API's 60 minutes
    max_input_buffer_bytes: int = 15 * 1024 * 1024  # 5.4 minutes of 24 kHz pcm16
    max_items: int = DEFAULT_MAX_ITEMS
    max_conversation_chars: int = DEFAULT_MAX_CHARS


class RealtimeEndpoint:
    """The `/v1/realtime` WebSocket route: counts sessions and runs each."""

    def __init__(self, voice: Voice, limits: RealtimeLimits) -> None:
        self.voice = voice
        self.limits = limits
        self.open_sessions = 0

    async def serve(self, websocket: WebSocket) -> None:
        """Run one session on `websocket`; at the session limit, an `error` event and close code 1013."""
        await websocket.accept()
        if self.open_sessions >= self.limits.max_sessions:
            limit = self.limits.max_sessions
            message = f"The offline voice holds at most {limit} Realtime sessions; try again later."
            refusal = error_event(message, "session_limit_reached", type_="rate_limit_exceeded")
            with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
                await websocket.send_text(json.dumps(refusal))
                await websocket.close(1013)
            return
        self.open_sessions += 1
        try:
            model = websocket.query_params.get("model") or None
            await _Session(websocket, self.voice, self.limits, model).run()
        finally:
            self.open_sessions -= 1


class _Session:
    """One client's session: its configuration, conversation, input audio and at most one response."""

    def __init__(self, websocket: WebSocket, voice: Voice, limits: RealtimeLimits, model: str | None) -> None:
        self._ws = websocket
        self._voice = voice
        self._limits = limits
        self._config = SessionConfig() if model is None else SessionConfig(model=model)
        self._conversation = Conversation(limits.max_items, limits.max_conversation_chars)
        self._buffer = bytearray()  # input audio while turns are committed by hand
        self._listener: VoiceListener | None = None  # input audio under server VAD
        self._speech_item: str | None = None  # the item id that speech under way will commit to
        self._response: RealtimeResponse | None = None
        self._voice_locked = False
        self._closed = False
        self._send_lock = asyncio.Lock()
        self._handlers: dict[str, Callable[[Json], Awaitable[None]]] = {
            "session.update": self._session_update,
            "conversation.item.create": self._item_create,
            "conversation.item.delete": self._item_delete,
            "conversation.item.retrieve": self._item_retrieve,
            "conversation.item.truncate": self._item_truncate,
            "response.create": self._response_create,
            "response.cancel": self._response_cancel,
            "input_audio_buffer.append": self._append,
            "input_audio_buffer.commit": self._commit,
            "input_audio_buffer.clear": self._clear,
            "output_audio_buffer.clear": self._output_clear,
        }

    async def send(self, body: Json) -> None:
        """Send one server event; SocketGone once the client has left."""
        if self._closed:
            raise SocketGone
        async with self._send_lock:
            try:
                await self._ws.send_text(json.dumps(body, ensure_ascii=False, separators=(",", ":")))
            except (WebSocketDisconnect, RuntimeError, OSError) as exc:
                self._closed = True
                raise SocketGone from exc

    async def run(self) -> None:
        """Serve the session until the client leaves or its time is up; stop any response on the way out."""
        try:
            await self.send(event("session.created", session=self._config.json()))
            await self._setup_turn_detection()
            async with asyncio.timeout(self._limits.max_session_seconds):
                while not self._closed:
                    message = await self._ws.receive()
                    if message["type"] == "websocket.disconnect":
                        break
                    await self._handle(message.get("text"), message.get("bytes"))
        except TimeoutError:
            minutes = self._limits.max_session_seconds / 60
            with contextlib.suppress(SocketGone):
                await self._stop_response(None)
                await self.send(
                    error_event(
                        f"Your session hit the maximum duration of {minutes:g} minutes.", "session_expired"
                    )
                )
            with contextlib.suppress(RuntimeError, OSError):
                await self._ws.close(1000)
        except SocketGone:
            pass
        finally:
            self._closed = True
            if self._response is not None:
                self._response.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._response.task

    async def _handle(self, text: str | None, data: bytes | None) -> None:
        client_event_id: str | None = None
        try:
            if text is None:
                raise RealtimeError(
                    "Binary frames are not part of the Realtime protocol: send JSON text.",
                    None,
                    "invalid_json",
                )
            try:
                body = json.loads(text)
            except (ValueError, RecursionError) as exc:
                raise RealtimeError(f"The event is not valid JSON ({exc}).", None, "invalid_json") from exc
            if not isinstance(body, dict):
                raise RealtimeError("An event must be a JSON object.", None, "invalid_type")
            problem = json_problem(body, "", MAX_EVENT_DEPTH)
            if problem is not None:  # nothing in an event may be unsendable back (lone surrogates, NaN)
                raise RealtimeError(f"Invalid '{problem[0]}': it {problem[1]}.", problem[0] or None)
            if isinstance(body.get("event_id"), str):
                client_event_id = body["event_id"]
            kind = body.get("type")
            allowed = CLIENT_EVENTS.get(kind) if isinstance(kind, str) else None
            if allowed is None or not isinstance(kind, str):
                listing = ", ".join(f"'{name}'" for name in CLIENT_EVENTS)
                raise RealtimeError(f"Invalid value: '{kind}'. Supported values are: {listing}.", "type")
            for key in body:
                if key not in allowed and key not in ("type", "event_id"):
                    raise RealtimeError(f"Unknown parameter: '{key}'.", key, "unknown_parameter")
            await self._handlers[kind](body)
        except RealtimeError as exc:
            await self.send(error_event(str(exc), exc.code, exc.param, client_event_id))
        except (SocketGone, asyncio.CancelledError):
            raise
        except Exception:  # a bug: said as the API says it, logged, and the session goes on
            logger.exception("offline realtime: an event failed")
            await self.send(error_event(SERVER_ERROR, "server_error", None, client_event_id, "server_error"))

    # -- session -------------------------------------------------------------------------------------

    async def _session_update(self, body: Json) -> None:
        before = self._config.turn_detection
        self._config.update(body.get("session"), self._voice_locked)
        if self._config.turn_detection != before:
            await self._setup_turn_detection()
        await self.send(event("session.updated", session=self._config.json()))

    async def _setup_turn_detection(self) -> None:
        """(Re)start input listening for the configured turn detection; audio not committed is dropped."""
        self._buffer.clear()
        self._speech_item = None
        settings = self._config.vad_settings()
        if settings is None:
            self._listener = None
            return
        await asyncio.to_thread(silero.load)  # once per process, off the event loop
        self._listener = VoiceListener(settings, SAMPLE_RATE_HZ, self._limits.max_input_buffer_bytes)

    # -- conversation --------------------------------------------------------------------------------

    async def _item_create(self, body: Json) -> None:
        item = check_item(body.get("item"))
        previous = body.get("previous_item_id")
        if previous is not None and not isinstance(previous, str):
            raise RealtimeError(
                "Invalid type for 'previous_item_id': expected a string.", "previous_item_id", "invalid_type"
            )
        await self._add(item, previous)

    async def _add(self, item: Item, previous_item_id: str | None = None) -> None:
        follows = self._conversation.add(item, previous_item_id)
        await self.send(event("conversation.item.added", previous_item_id=follows, item=item.json))
        await self.send(event("conversation.item.done", previous_item_id=follows, item=item.json))

    def _item(self, body: Json) -> Item:
        item_id = body.get("item_id")
        if not isinstance(item_id, str):
            raise RealtimeError(
                "Missing required parameter: 'item_id'.", "item_id", "missing_required_parameter"
            )
        item = self._conversation.get(item_id)
        if item is None:
            raise RealtimeError(f"Item with item_id '{item_id}' not found.", "item_id", "item_not_found")
        return item

    async def _item_delete(self, body: Json) -> None:
        item = self._item(body)
        self._conversation.delete(item.id)
        await self.send(event("conversation.item.deleted", item_id=item.id))

    async def _item_retrieve(self, body: Json) -> None:
        await self.send(event("conversation.item.retrieved", item=self._item(body).json))

    async def _item_truncate(self, body: Json) -> None:
        """Cut an answer's audio where the listener stopped hearing it; its transcript goes with it."""
        item = self._item(body)
        content_index, end_ms = body.get("content_index"), body.get("audio_end_ms")
        if item.json.get("role") != "assistant" or not item.has_audio:
            raise RealtimeError(
                "Only assistant messages with audio can be truncated.", "item_id", "invalid_value"
            )
        if item.json["status"] == "in_progress":
            raise RealtimeError(
                "The item is still being spoken: cancel the response first.", "item_id", "item_in_progress"
            )
        if content_index != 0:
            raise RealtimeError(
                f"Invalid 'content_index': the item has one content part (0), not {content_index}.",
                "content_index",
            )
        if isinstance(end_ms, bool) or not isinstance(end_ms, int) or end_ms < 0:
            raise RealtimeError(
                "Invalid 'audio_end_ms': expected whole milliseconds, 0 or more.",
                "audio_end_ms",
                "invalid_type",
            )
        if end_ms > item.audio_ms:
            raise RealtimeError(
                f"audio_end_ms ({end_ms}) is past the end of the item's audio ({item.audio_ms} ms).",
                "audio_end_ms",
            )
        item.audio_ms = end_ms
        item.json = {**item.json, "content": [{"type": "output_audio", "transcript": None}]}
        self._conversation.resized(item)
        await self.send(
            event("conversation.item.truncated", item_id=item.id, content_index=0, audio_end_ms=end_ms)
        )

    # -- responses -----------------------------------------------------------------------------------

    async def _response_create(self, body: Json) -> None:
        if self._response is not None:
            raise RealtimeError(
                f"Conversation already has an active response in progress: {self._response.id}. "
                "Wait until the response is finished before creating a new one.",
                None,
                "conversation_already_has_active_response",
            )
        params = response_params(body.get("response"), self._config)
        items = self._conversation.items()
        if params.input is not None:
            items = [self._input_item(raw, f"response.input[{i}]") for i, raw in enumerate(params.input)]
        self._start_response(params, prompt_of(items))

    def _input_item(self, raw: Any, param: str) -> Item:
        """An item of an out-of-band response's `input`: a new item, or a reference to a conversation item."""
        if isinstance(raw, dict) and raw.get("type") == "item_reference":
            item = self._conversation.get(str(raw.get("id")))
            if item is None:
                raise RealtimeError(
                    f"Item with id '{raw.get('id')}' not found.", f"{param}.id", "item_not_found"
                )
            return item
        return check_item(raw, param)

    def _start_response(self, params: Any, prompt: Any) -> None:
        conversation = self._conversation if params.in_conversation else None
        response = RealtimeResponse(self.send, params, prompt, conversation, self._voice)
        self._response = response
        response.task.add_done_callback(lambda _: self._response_ended(response))

    def _response_ended(self, response: RealtimeResponse) -> None:
        self._voice_locked = self._voice_locked or response.spoke
        if self._response is response:
            self._response = None

    async def _stop_response(self, reason: str | None) -> None:
        if self._response is not None:
            await self._response.stop(reason)

    async def _response_cancel(self, body: Json) -> None:
        response_id = body.get("response_id")
        response = self._response
        if response is None or response_id not in (None, response.id):
            raise RealtimeError(
                "Cancellation failed: no active response found.", "response_id", "response_cancel_not_active"
            )
        await response.stop("client_cancelled")

    # -- input audio ---------------------------------------------------------------------------------

    async def _append(self, body: Json) -> None:
        audio = body.get("audio")
        if not isinstance(audio, str):
            raise RealtimeError("Missing required parameter: 'audio'.", "audio", "missing_required_parameter")
        try:
            pcm = base64.b64decode(audio, validate=True)
        except binascii.Error as exc:
            raise RealtimeError(f"Invalid 'audio': not base64 ({exc}).", "audio") from exc
        if self._listener is not None:
            for heard in await self._listener.feed(pcm):
                await self._heard(heard)
            return
        if len(self._buffer) + len(pcm) > self._limits.max_input_buffer_bytes:
            raise RealtimeError(
                f"The input audio buffer holds at most {self._limits.max_input_buffer_bytes} bytes: "
                "commit or clear it. This audio was dropped.",
                "audio",
                "input_audio_buffer_full",
            )
        self._buffer += pcm

    async def _heard(self, heard: SpeechStarted | Utterance) -> None:
        """Server VAD: speech started (interrupting the answer, if configured), or an utterance to commit."""
        detection = self._config.turn_detection or {}
        if isinstance(heard, SpeechStarted):
            self._speech_item = new_id("item")
            await self.send(
                event(
                    "input_audio_buffer.speech_started",
                    audio_start_ms=heard.audio_start_ms,
                    item_id=self._speech_item,
                )
            )
            if detection.get("interrupt_response", True):
                await self._stop_response("turn_detected")
            return
        item_id = self._speech_item or new_id("item")
        self._speech_item = None
        await self.send(
            event("input_audio_buffer.speech_stopped", audio_end_ms=heard.audio_end_ms, item_id=item_id)
        )
        await self._commit_audio(len(heard.pcm16), item_id)
        if detection.get("create_response", True) and self._response is None:
            self._start_response(response_params(None, self._config), prompt_of(self._conversation.items()))

    async def _commit(self, body: Json) -> None:
        del body
        if self._listener is not None:
            utterance = self._listener.take()
            audio_bytes = len(utterance.pcm16) if utterance is not None else 0
        else:
            audio_bytes = len(self._buffer)
        if pcm_ms(audio_bytes) < MIN_COMMIT_MS:
            raise RealtimeError(
                "Error committing input audio buffer: buffer too small. Expected at least "
                f"{MIN_COMMIT_MS}ms of audio, but buffer only has {pcm_ms(audio_bytes)}ms of audio.",
                None,
                "input_audio_buffer_commit_empty",
            )
        self._buffer.clear()
        item_id = self._speech_item or new_id("item")
        self._speech_item = None
        await self._commit_audio(audio_bytes, item_id)

    async def _commit_audio(self, audio_bytes: int, item_id: str) -> None:
        """The committed audio becomes a user message (its duration kept, its bytes not)."""
        content = [{"type": "input_audio", "transcript": None}]
        json_item = {
            "id": item_id,
            "type": "message",
            "object": "realtime.item",
            "status": "completed",
            "role": "user",
            "content": content,
        }
        item = Item(json_item, pcm_ms(audio_bytes), has_audio=True)
        previous = self._conversation.last_id()
        await self.send(event("input_audio_buffer.committed", previous_item_id=previous, item_id=item_id))
        await self._add(item)

    async def _clear(self, body: Json) -> None:
        del body
        self._buffer.clear()
        if self._listener is not None:
            self._listener.drop()
        self._speech_item = None
        await self.send(event("input_audio_buffer.cleared"))

    async def _output_clear(self, body: Json) -> None:
        del body
        raise RealtimeError(
            "output_audio_buffer.clear is for WebRTC and SIP sessions; over WebSocket send response.cancel.",
            "type",
            "unsupported_value",
        )
