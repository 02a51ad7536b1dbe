"""One Realtime response of the offline voice: the same answer, speech and tool calls as its Chat
Completions face, sent as the Realtime API's response events.

A response stops at once when told (`stop`: a client's response.cancel, or new speech under server VAD):
between two audio pieces, never inside one, and then closes what it opened (the part, the item) and ends
with `response.done` status cancelled, so a client always sees every response through to its end.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from service.offline import wire
from service.offline.answer import compose_answer
from service.offline.pacing import Pacer
from service.offline.realtime_config import ResponseParams
from service.offline.realtime_conversation import Conversation, Item, Prompt
from service.offline.realtime_events import (
    RATE_LIMITS,
    Json,
    audio_tokens_for_ms,
    event,
    function_call_item,
    message_item,
    new_id,
    output_text_tokens,
    part_fields,
    pcm_ms,
    response_json,
    usage_json,
)
from service.offline.speech import SpeechError, synthesize
from service.offline.tools import ARGUMENT_PIECE_CHARS, PlannedCall, choose_call, preamble, speak_results

logger = logging.getLogger(__name__)

Send = Callable[[Json], Awaitable[None]]


class SocketGone(Exception):
    """The client's socket closed: nothing more can be sent."""


@dataclass
class Voice:
    """How the offline voice speaks: pacing (0 = as fast as it can) and the audio pieces' lengths."""

    realtime_factor: float = 0.0
    piece_ms: tuple[int, ...] = wire.DEFAULT_PIECE_MS


@dataclass
class _Spoken:
    """What has left so far: the words, the audio, the output items."""

    words: str = ""
    audio_bytes: int = 0
    argument_chars: int = 0
    output: list[Json] = field(default_factory=list)


class RealtimeResponse:
    """Runs one response as a task; `stop(reason)` ends it early."""

    def __init__(
        self,
        send: Send,
        params: ResponseParams,
        prompt: Prompt,
        conversation: Conversation | None,
        voice: Voice,
    ) -> None:
        self.id = new_id("resp")
        self._send = send
        self._params = params
        self._prompt = prompt
        self._conversation = conversation  # None: out of band, nothing is added to the conversation
        self._voice = voice
        self._stopped = asyncio.Event()
        self.stop_reason: str | None = None
        self._length_cut = False
        self._spoken = _Spoken()
        self.task: asyncio.Task[None] = asyncio.create_task(self._run(), name=f"realtime:{self.id}")

    @property
    def spoke(self) -> bool:
        """Whether any audio left (the session's voice is then fixed)."""
        return self._spoken.audio_bytes > 0

    async def stop(self, reason: str | None) -> None:
        """Stop at the next piece and wait until `response.done` has been sent; `reason` is the API's
        status_details.reason ("client_cancelled", "turn_detected"; None when the session ends)."""
        if not self._stopped.is_set():
            self.stop_reason = reason
            self._stopped.set()
        await asyncio.shield(self.task)

    def _json(self, status: str, usage: Json | None = None, details: Json | None = None) -> Json:
        params = self._params
        return response_json(
            self.id,
            self._conversation.id if self._conversation is not None else None,
            status,
            params.modalities,
            params.voice,
            params.max_output_tokens,
            list(self._spoken.output),
            usage,
            details,
            params.metadata,
        )

    async def _run(self) -> None:
        try:
            await self._send(event("response.created", response=self._json("in_progress")))
            failure = await self._answer()
            await self._send(event("response.done", response=self._done_json(failure)))
            await self._send(event("rate_limits.updated", rate_limits=[dict(r) for r in RATE_LIMITS]))
        except SocketGone:
            logger.debug("realtime response %s: the client left", self.id)

    def _done_json(self, failure: str) -> Json:
        spoken = self._spoken
        audio_ms = pcm_ms(spoken.audio_bytes)
        usage = usage_json(
            self._prompt.text_tokens,
            self._prompt.audio_tokens,
            output_text_tokens(spoken.words) + -(-spoken.argument_chars // 4),
            audio_tokens_for_ms(audio_ms),
        )
        if failure:
            error = {"type": "server_error", "code": "server_error", "message": failure}
            return self._json("failed", usage, {"type": "failed", "error": error})
        if self._stopped.is_set():
            return self._json("cancelled", usage, {"type": "cancelled", "reason": self.stop_reason})
        if self._length_cut:
            return self._json("incomplete", usage, {"type": "incomplete", "reason": "max_output_tokens"})
        return self._json("completed", usage)

    async def _answer(self) -> str:
        """Send the output items; return a failure message, empty when none."""
        prompt, params = self._prompt, self._params
        call: PlannedCall | None = None
        if prompt.results:
            answer = speak_results(prompt.results)
        else:
            choice = params.tool_choice
            if isinstance(choice, dict):
                call = choose_call(params.tools, None, choice["name"], prompt.user_text)
            else:
                call = choose_call(params.tools, choice, None, prompt.user_text)
            answer = "" if call else compose_answer(prompt.user_text, prompt.user_audio_seconds)
        audio = params.modalities == ["audio"]
        try:
            if call is None:
                await (self._speak(answer) if audio else self._write(answer))
            else:
                if audio:
                    await self._speak(preamble(call))
                if not self._stopped.is_set() and not self._length_cut:
                    await self._call(call)
        except SpeechError as exc:
            logger.exception("offline voice synthesis failed")
            return f"The offline voice could not speak: {exc}"
        return ""

    def _budget_left(self, text: str, audio_bytes: int) -> bool:
        """Whether output of `text` and `audio_bytes` more stays within max_output_tokens."""
        limit = self._params.max_output_tokens
        if limit == "inf":
            return True
        spoken = self._spoken
        used = output_text_tokens(spoken.words + text) + audio_tokens_for_ms(
            pcm_ms(spoken.audio_bytes + audio_bytes)
        )
        if used > int(limit):
            self._length_cut = True
            return False
        return True

    async def _open_item(self, item: Json) -> tuple[int, str | None]:
        """Announce a new output item; return its output index and the conversation item it follows."""
        index = len(self._spoken.output)
        self._spoken.output.append(item)
        await self._send(
            event("response.output_item.added", response_id=self.id, output_index=index, item=item)
        )
        previous = None
        if self._conversation is not None:
            previous = self._conversation.add(Item(dict(item)))
            await self._send(event("conversation.item.added", previous_item_id=previous, item=item))
        return index, previous

    async def _close_item(self, index: int, previous: str | None, item: Json, audio_ms: int = 0) -> None:
        self._spoken.output[index] = item
        await self._send(
            event("response.output_item.done", response_id=self.id, output_index=index, item=item)
        )
        if self._conversation is not None:
            stored = self._conversation.get(item["id"])
            if stored is not None:
                stored.json, stored.audio_ms, stored.has_audio = item, audio_ms, audio_ms > 0
                self._conversation.resized(stored)
            await self._send(event("conversation.item.done", previous_item_id=previous, item=item))

    def _status(self) -> str:
        return "incomplete" if self._stopped.is_set() or self._length_cut else "completed"

    async def _speak(self, text: str) -> None:
        """An assistant message spoken: transcript deltas running just ahead of the audio they say."""
        item_id = new_id("item")
        index, previous = await self._open_item(message_item(item_id, "in_progress", []))
        where = part_fields(self.id, item_id, index)
        await self._send(
            event("response.content_part.added", **where, part={"type": "audio", "transcript": ""})
        )
        pcm = await asyncio.to_thread(synthesize, text, _voice_name(self._params.voice))
        pieces = wire.pcm_pieces(pcm, self._voice.piece_ms)
        words = wire.transcript_pieces(text)
        said, sent_bytes = "", 0
        pacer = Pacer(self._voice.realtime_factor)
        for number, piece in enumerate(pieces, start=1):
            due = words[: -(-len(words) * number // len(pieces))]
            new_words = "".join(due)[len(said) :]
            if self._stopped.is_set() or not self._budget_left(new_words, len(piece)):
                break
            if new_words:
                await self._send(event("response.output_audio_transcript.delta", **where, delta=new_words))
                said += new_words
                self._spoken.words += new_words
            if not await self._paced(pacer, len(piece)):
                break
            data = base64.b64encode(piece).decode("ascii")
            await self._send(event("response.output_audio.delta", **where, delta=data))
            sent_bytes += len(piece)
            self._spoken.audio_bytes += len(piece)
        await self._send(event("response.output_audio.done", **where))
        await self._send(event("response.output_audio_transcript.done", **where, transcript=said))
        part = {"type": "audio", "transcript": said}
        await self._send(event("response.content_part.done", **where, part=part))
        content = [{"type": "output_audio", "transcript": said}]
        audio_ms = pcm_ms(sent_bytes)
        await self._close_item(index, previous, message_item(item_id, self._status(), content), audio_ms)
        self._spoken.words += " "

    async def _paced(self, pacer: Pacer, audio_bytes: int) -> bool:
        """Wait for the piece's turn; False if the response was stopped meanwhile."""
        waiting = asyncio.create_task(pacer.before_sending(audio_bytes))
        stopped = asyncio.create_task(self._stopped.wait())
        try:
            await asyncio.wait((waiting, stopped), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (waiting, stopped):
                task.cancel()
        return not self._stopped.is_set()

    async def _write(self, text: str) -> None:
        """An assistant message in text, word by word."""
        item_id = new_id("item")
        index, previous = await self._open_item(message_item(item_id, "in_progress", []))
        where = part_fields(self.id, item_id, index)
        await self._send(event("response.content_part.added", **where, part={"type": "text", "text": ""}))
        written = ""
        for piece in wire.transcript_pieces(text):
            if self._stopped.is_set() or not self._budget_left(piece, 0):
                break
            await self._send(event("response.output_text.delta", **where, delta=piece))
            written += piece
            self._spoken.words += piece
            await asyncio.sleep(0)  # a cancel sent meanwhile is read before the next word
        await self._send(event("response.output_text.done", **where, text=written))
        await self._send(event("response.content_part.done", **where, part={"type": "text", "text": written}))
        content = [{"type": "output_text", "text": written}]
        await self._close_item(index, previous, message_item(item_id, self._status(), content))

    async def _call(self, call: PlannedCall) -> None:
        """A function call item, its arguments in pieces of a few characters as real streams cut them."""
        item_id = new_id("item")
        index, previous = await self._open_item(
            function_call_item(item_id, "in_progress", call.id, call.name, "")
        )
        fields = {"response_id": self.id, "item_id": item_id, "output_index": index, "call_id": call.id}
        for start in range(0, len(call.arguments), ARGUMENT_PIECE_CHARS):
            piece = call.arguments[start : start + ARGUMENT_PIECE_CHARS]
            await self._send(event("response.function_call_arguments.delta", **fields, delta=piece))
        self._spoken.argument_chars += len(call.arguments)
        done = {**fields, "name": call.name, "arguments": call.arguments}
        await self._send(event("response.function_call_arguments.done", **done))
        item = function_call_item(item_id, "completed", call.id, call.name, call.arguments)
        await self._close_item(index, previous, item)


def _voice_name(voice: object) -> str:
    """The voice name synthesize() takes: a name, or a custom voice's id."""
    if isinstance(voice, dict):
        return str(voice.get("id", ""))
    return str(voice)
