"""One Converse call: buffers push-to-talk audio, runs one turn at a time, keeps the history.

An answer that calls tools waits for one tool_result per call; the last result starts the continuation
(a turn with no new user input). An interrupt or a new input before then cancels it: the calls and the
results so far leave the history (the upstream refuses a call without its result), the speech stays.

The client's messages are handled in arrival order by `handle`; turn events flow out through `outbox`,
bounded so a slow reader slows the upstream read instead of growing memory. An event the upstream
produced is never dropped: a turn interrupted while its next event waits for room still delivers it,
so sequence numbers stay gap-free.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager, aclosing, nullcontext
from dataclasses import dataclass

from audiochat.v1 import audiochat_pb2 as pb
from service import observe
from service.audio import AudioFormatError
from service.audio.decode import DecodeLimit, StreamDecoder
from service.conversation_resume import (
    ALL_OF_IT_MS,
    CANCEL_WAIT_SECONDS,
    CUT_CALL_ENDED,
    CUT_GONE,
    CUT_GRACE,
    TAKEN_OVER,
    Binding,
    TurnJournal,
    cut_event,
    follow_turn,
    history_items,
    wait_saved,
)
from service.errors import (
    AudioChatError,
    InvalidInput,
    Overloaded,
    ShuttingDown,
    StoreUnavailable,
    TakenOver,
    TurnFailed,
    UpstreamFailure,
    WrongState,
)
from service.hands_free import HandsFree, vad_settings
from service.normalizer import SAMPLE_RATE_HZ
from service.realtime_session import RealtimeConversation
from service.tool_input import CalledTool, PendingCalls, ToolEntry
from service.turn import Turn
from service.turn_input import (
    OUTPUT_PCM16,
    AssistantEntry,
    Defaults,
    Entry,
    Limits,
    TooLarge,
    UserEntry,
    history_entries,
    history_entries_off_loop,
    resolve_settings,
    user_entry,
    user_entry_off_loop,
)
from service.upstream import Upstream
from service.upstream_request import build_params
from service.upstream_routing import end_conversation, for_conversation, resolve, truncate_heard
from service.upstream_vad import (
    DEFAULT_PREFIX_PADDING_MS,
    FeedUpstream,
    UpstreamEvent,
    upstream_turn_detection,
)
from service.vad.listener import Utterance
from service.vad.segmenter import SpeechStarted

log = logging.getLogger(__name__)

OUTBOX_SOFT_LIMIT = 64
# User audio has no server-side id, so history re-sends it; past this the oldest recordings are dropped.
MAX_HISTORY_AUDIO_BYTES = 8 * 1024 * 1024


# An event on its way out: the response, its turn, and when the chunk behind it was read.
Delivery = tuple[pb.ConverseResponse, Turn | None, float]


class Outbox:
    """A queue whose producers wait for room, except the one that must not lose an event."""

    def __init__(self, soft_limit: int = OUTBOX_SOFT_LIMIT) -> None:
        self._queue: asyncio.Queue[Delivery | BaseException | None] = asyncio.Queue()
        self._soft_limit = soft_limit
        self._room = asyncio.Event()
        self._room.set()
        self._discarding = False

    def discard(self) -> None:
        """Nobody reads any more (the call ended, its turn runs on for a resume): drop what comes."""
        self._discarding = True
        while not self._queue.empty():
            self._queue.get_nowait()
        self._room.set()

    async def put(self, item: Delivery) -> None:
        """Add an item once there is room."""
        if self._discarding:
            return
        while self._queue.qsize() >= self._soft_limit:
            self._room.clear()
            await self._room.wait()
        self._queue.put_nowait(item)

    def put_now(self, item: Delivery | BaseException | None) -> None:
        """Add an item past the limit: a last event, a failure, or None for the end."""
        if not self._discarding:
            self._queue.put_nowait(item)

    async def get(self) -> Delivery | BaseException | None:
        """The next item: a response, the exception that ends the call, or None for a clean end."""
        item = await self._queue.get()
        if self._queue.qsize() < self._soft_limit:
            self._room.set()
        return item


@dataclass(slots=True)
class Recording:
    """Push-to-talk audio until commit: raw pcm16 buffered, a file (webm, ogg...) decoded as it arrives."""

    data: bytearray
    format: pb.AudioFormat | None = None
    decoder: StreamDecoder | None = None
    received_bytes: int = 0

    def close(self) -> None:
        """Drop what is buffered; stop the decoder's thread."""
        if self.decoder is not None:
            self.decoder.close()


class Conversation:
    """The state of one Converse call after its config."""

    def __init__(
        self,
        config: pb.ConverseConfig,
        *,
        upstream: Upstream,
        defaults: Defaults,
        limits: Limits,
        on_turn_end: Callable[[Turn], None],
        on_heard_part: Callable[[int], None] = lambda played_ms: None,
        turn_slot: Callable[[], AbstractContextManager[None]] = nullcontext,
        on_barge_in: Callable[[], None] = lambda: None,
        history: list[Entry] | None = None,
        conversation_id: str = "",
    ) -> None:
        self.conversation_id = conversation_id or f"conv_{uuid.uuid4().hex}"
        self._config = config
        self.settings = resolve_settings(config.turn, defaults)
        # `history`: config.history already validated (and its recordings decoded off the event loop).
        self.history: list[Entry] = (
            history if history is not None else history_entries(config.history, limits)
        )
        self.outbox = Outbox()
        self._shared_upstream = upstream
        # The upstream's own turn detection (service.upstream_vad): checked before a session opens.
        self._upstream_detection = upstream_turn_detection(config.turn_detection)
        if self._upstream_detection is not None:
            _check_upstream_detection(upstream, self.settings.model, bool(self.settings.tools))
        # The Realtime API gets one session per conversation (opened now, closed with the call).
        self._upstream = for_conversation(upstream, self.settings.model)
        self._limits = limits
        self._on_turn_end = on_turn_end
        self._on_heard_part = on_heard_part
        self._turn_slot = turn_slot  # held while a turn runs; raises Overloaded when none is free
        self._recording = Recording(bytearray())
        self._turn: Turn | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_answer: tuple[int, int] | None = (
            None  # (history index, audio ms) of the last spoken answer
        )
        self._draining = False
        self._pending = PendingCalls()
        self._on_barge_in = on_barge_in
        vad = vad_settings(config.turn_detection) if self._upstream_detection is None else None
        self._hands_free = HandsFree(vad, limits) if vad is not None else None
        self._listening = False  # upstream detection: the session listens (after the first audio chunk)
        self._upstream_lock = asyncio.Lock()  # the client's messages and the session's events, one at a time
        # The input audio sent upstream since the last speech (at most max_turn_audio_bytes), from byte
        # `_heard_from` of the session's input: the gateway's copy of each utterance, for its history.
        self._heard = bytearray()
        self._heard_from = 0
        self._speech_start_ms = 0
        self._spoken: UserEntry | None = None
        self._speech_stopped_at: float | None = None
        # After a barge-in by voice: (history index, transcript, audio ms) of the answer whose heard part
        # is the service's estimate, until the client's Interrupt says how much it really played.
        self._estimated: tuple[int, str, int] | None = None
        # Resume: the store's hold on this conversation, the log of the running turn, and the turn of
        # an earlier call being followed (its rest replayed from the store) after a resume.
        self.binding: Binding | None = None
        self._journal: TurnJournal | None = None
        self._following = ""
        self._side_tasks: set[asyncio.Task[None]] = set()

    @property
    def resumable(self) -> bool:
        """Whether a later call can resume this conversation."""
        return self.binding is not None and not self.binding.broken

    def snapshot(self) -> bytes:
        """What a resume continues from: the config, with the history as it stands (calls still
        waiting for their results left out: a resume cannot answer them)."""
        history = self.history
        if self._pending.waiting:
            history = history[: len(history) - self._pending.answered - 1]
        config = pb.ConverseConfig(
            turn=self._config.turn,
            turn_detection=self._config.turn_detection,
            history=history_items(history),
        )
        if self._config.HasField("resume_grace_ms"):
            config.resume_grace_ms = self._config.resume_grace_ms
        return config.SerializeToString()

    async def _save(self, turn_id: str = "") -> None:
        if self.binding is not None:
            await self.binding.save(self.snapshot(), turn_id)

    async def handle(self, request: pb.ConverseRequest) -> None:
        """Apply one client message."""
        if self._upstream_detection is None:
            await self._handle(request)
            return
        kind = request.WhichOneof("request")
        if kind in ("text", "commit", "tool_result"):
            raise WrongState(
                f"{kind} is not accepted while the upstream detects turns"
                " (config.turn_detection.type upstream_server_vad or upstream_semantic_vad)"
            )
        async with self._upstream_lock:
            if kind == "audio":
                await self._append(request.audio)
            elif kind == "clear_audio":
                await self._session().clear_input()
                self._heard_from += len(self._heard)
                self._heard.clear()
            else:
                await self._handle(request)

    async def _handle(self, request: pb.ConverseRequest) -> None:
        kind = request.WhichOneof("request")
        if kind == "audio":
            if self._hands_free is not None:
                await self._hear(request.audio)
            else:
                self._record(request.audio)
        elif kind == "text":
            message = pb.UserMessage(text=request.text.text)
            await self._start(user_entry(message, self._limits, required=True), "text")
        elif kind == "commit":
            await self._commit(request.commit)
        elif kind == "interrupt":
            await self._interrupt(request.interrupt.played_ms)
            if self._task is None or self._task.done():
                await self._save()  # a heard part cut from the last answer
        elif kind == "tool_result":
            await self._tool_result(request.tool_result)
        elif kind == "clear_audio":
            self._new_recording().close()
            if self._hands_free is not None:
                self._hands_free.drop()
        elif kind in ("config", "resume"):
            raise WrongState(f"{kind} is only accepted as the first message of a conversation")
        else:
            raise InvalidInput("empty ConverseRequest: set one of config, text, audio, commit, interrupt")

    def _record(self, chunk: pb.AudioChunk) -> None:
        recording = self._recording
        if chunk.HasField("format"):
            if recording.format is None:
                recording.format = chunk.format
            elif chunk.format != recording.format:
                raise InvalidInput("an audio chunk changed format in the middle of a recording")
        elif recording.format is None:
            raise InvalidInput("the first audio chunk of a recording needs its format")
        recording.received_bytes += len(chunk.data)
        if recording.received_bytes > self._limits.max_turn_audio_bytes:
            raise TooLarge(f"the recording is over the limit of {self._limits.max_turn_audio_bytes} bytes")
        if recording.format.encoding == pb.AUDIO_ENCODING_PCM16:
            recording.data += chunk.data
            return
        if recording.decoder is None:
            recording.decoder = StreamDecoder(self._limits.decode_limits)
        try:
            recording.decoder.feed(chunk.data)
        except DecodeLimit as exc:
            raise TooLarge(f"recording refused: {exc}") from exc
        except AudioFormatError as exc:
            raise InvalidInput(f"unreadable recording: {exc}") from exc

    def _new_recording(self) -> Recording:
        recording, self._recording = self._recording, Recording(bytearray())
        return recording

    async def _commit(self, commit: pb.Commit) -> None:
        if self._hands_free is not None:
            # server_vad: a Commit ends the speech under way now (or sends its text alone).
            utterance = self._hands_free.take()
            if utterance is not None:
                message = self._hands_free.message(utterance, commit.text)
                await self._start(user_entry(message, self._limits, required=True), "manual")
                return
        recording = self._new_recording()
        if recording.format is None and not commit.text.strip():
            raise InvalidInput("empty turn: commit without audio or text")
        message = pb.UserMessage(text=commit.text)
        whole = recording.decoder.kept_whole() if recording.decoder is not None else None
        if whole is not None:
            message.audio.CopyFrom(pb.AudioInput(data=whole, format=recording.format))
        elif recording.decoder is not None:
            message.audio.CopyFrom(await _decoded(recording.decoder))
        elif recording.format is not None:
            message.audio.CopyFrom(pb.AudioInput(data=bytes(recording.data), format=recording.format))
        await self._start(await user_entry_off_loop(message, self._limits, required=True), "manual")

    async def _hear(self, chunk: pb.AudioChunk) -> None:
        assert self._hands_free is not None
        for heard in await self._hands_free.hear(chunk):
            if isinstance(heard, SpeechStarted):
                await self._speech_started(heard)
            else:
                await self._speech_stopped(heard)

    async def _speech_started(self, started: SpeechStarted) -> None:
        assert self._hands_free is not None
        if self._hands_free.echo_guarded(self._turn):
            self._hands_free.drop()
            return
        event = pb.SpeechStarted(audio_start_ms=started.audio_start_ms)
        await self.outbox.put((pb.ConverseResponse(speech_started=event), None, time.perf_counter()))
        await self._barge_in()

    async def _speech_stopped(self, utterance: Utterance) -> None:
        assert self._hands_free is not None
        now = time.perf_counter()
        event = pb.SpeechStopped(audio_end_ms=utterance.audio_end_ms)
        await self.outbox.put((pb.ConverseResponse(speech_stopped=event), None, now))
        user = user_entry(self._hands_free.message(utterance), self._limits, required=True)
        await self._start(user, "server_vad")
        if self._turn is not None:
            # The audio came in real time: the speaker stopped this long before the silence was judged.
            self._turn.speech_ended_at = now - (utterance.received_ms - utterance.audio_end_ms) / 1000

    def _session(self) -> RealtimeConversation:
        assert isinstance(self._upstream, RealtimeConversation)
        return self._upstream

    async def _append(self, chunk: pb.AudioChunk) -> None:
        """Upstream detection: a chunk of 24 kHz pcm16 goes to the session's input buffer."""
        assert self._upstream_detection is not None
        if chunk.HasField("format"):
            _check_upstream_format(chunk.format)
        elif not self._listening:
            raise InvalidInput("the first audio chunk of a conversation needs its format", "audio.format")
        session = self._session()
        if not self._listening:
            params = build_params(
                self.settings, self.history, UserEntry("", None), now=time.time(), use_audio_ids=False
            )
            await session.listen(params, self._upstream_detection, self._upstream_heard)
            self._listening = True
        self._heard += chunk.data
        excess = len(self._heard) - self._limits.max_turn_audio_bytes
        if excess > 0:
            del self._heard[:excess]
            self._heard_from += excess
        try:
            await session.append(chunk.data)
        except TurnFailed:
            # The session closed: its reader ends the call (UNAVAILABLE) once the running turn delivered
            # its own end; ending it here first would cut that turn's last events.
            log.info("audio for a closed Realtime session dropped: the call is ending")

    async def _upstream_heard(self, event: UpstreamEvent) -> None:
        """An event of the session that detects turns (its reader's task calls this)."""
        if isinstance(event, TurnFailed):
            # The session is gone, and what it heard with it: the call ends, after the running turn
            # delivered its own end (its feed got the failure first).
            if self._task is not None:
                await asyncio.wait([self._task])
            self.outbox.put_now(event)
            return
        try:
            async with self._upstream_lock:
                now = time.perf_counter()
                if isinstance(event, pb.SpeechStarted):
                    self._speech_start_ms = event.audio_start_ms
                    await self.outbox.put((pb.ConverseResponse(speech_started=event), None, now))
                    await self._barge_in()  # the upstream cancels its answer itself (interrupt_response)
                elif isinstance(event, pb.SpeechStopped):
                    await self.outbox.put((pb.ConverseResponse(speech_stopped=event), None, now))
                    self._spoken = await self._utterance(event.audio_end_ms)
                    self._speech_stopped_at = now
                else:
                    user, self._spoken = self._spoken or UserEntry("", None), None
                    upstream = FeedUpstream(event, self._session().response_finished)
                    await self._start(user, "upstream_vad", upstream)
                    if self._turn is not None:
                        self._turn.speech_ended_at, self._speech_stopped_at = self._speech_stopped_at, None
        except AudioChatError as exc:  # shutting down, a store failure...: the call ends with it
            self.outbox.put_now(exc)

    async def _utterance(self, audio_end_ms: int) -> UserEntry | None:
        """The gateway's copy of the speech the upstream committed (with its prefix padding), for the
        history; None when it is no longer held."""
        assert self._upstream_detection is not None
        padding = int(self._upstream_detection.get("prefix_padding_ms", DEFAULT_PREFIX_PADDING_MS))
        start = max(0, self._speech_start_ms - padding) * _PCM_BYTES_PER_MS - self._heard_from
        end = audio_end_ms * _PCM_BYTES_PER_MS - self._heard_from
        pcm = bytes(self._heard[max(0, start) : max(0, end)])
        dropped = min(max(0, end), len(self._heard))  # what came before the end of this speech
        del self._heard[:dropped]
        self._heard_from += dropped
        if not pcm:
            return None
        message = pb.UserMessage(audio=pb.AudioInput(data=pcm, format=OUTPUT_PCM16))
        return await user_entry_off_loop(message, self._limits, required=False)

    async def _barge_in(self) -> None:
        """Confirmed speech while an answer streams or plays: stop it, keep the part likely heard."""
        turn = self._turn
        if turn is None or turn.first_audio_at is None:
            await self._stop_turn(played_ms=0)  # nothing was played yet
            return
        played_ms = round((time.perf_counter() - turn.first_audio_at) * 1000)
        before = len(self.history)
        if await self._stop_turn(played_ms):
            completion = turn.completion
            if completion is not None and before < len(self.history):
                # The answer's place: after the user's input, unless it was a continuation without one.
                index = before + 1 if self.history[before] is turn.user else before
                audio_ms = completion.audio_samples * 1000 // SAMPLE_RATE_HZ
                self._estimated = (index, completion.transcript, audio_ms)
            self._on_barge_in()
        elif self._last_answer is not None and played_ms < self._last_answer[1]:
            index, audio_ms = self._last_answer
            entry = self.history[index]
            if isinstance(entry, AssistantEntry):
                self.history[index] = AssistantEntry(heard_part(entry.text, played_ms, audio_ms))
                self._estimated = (index, entry.text, audio_ms)
                await truncate_heard(self._upstream, played_ms)
            self._last_answer = None
            self._on_barge_in()

    async def _tool_result(self, result: pb.ToolResult) -> None:
        task, turn = self._task, self._turn
        if task is not None and turn is not None and not task.done():
            if not turn.finished:
                raise WrongState("tool_result: send results after the answer's TurnCompleted lists its calls")
            await asyncio.wait([task])  # its TurnCompleted is out; the calls are recorded when it ends
        if len(result.content) > self._limits.max_text_chars:
            raise TooLarge(
                f"tool_result.content is over the limit of {self._limits.max_text_chars} characters"
            )
        self._pending.answer(result.tool_call_id, "tool_result")
        self.history.append(ToolEntry(result.tool_call_id, result.content))
        if not self._pending.waiting:
            self._pending.clear()
            await self._start(UserEntry("", None), "tool_result")  # the continuation reads the results

    def _cancel_tool_calls(self) -> None:
        """Drop calls still waiting for results, and the results so far, from the history."""
        if not self._pending.waiting:
            return
        del self.history[len(self.history) - self._pending.answered :]
        calling = self.history.pop()
        if isinstance(calling, AssistantEntry) and (calling.text or calling.audio_id):
            # Same index as before, so what _last_answer says about the spoken part still holds.
            self.history.append(AssistantEntry(calling.text, calling.audio_id, calling.audio_expires_at))
        else:
            self._last_answer = None
        self._pending.clear()

    async def _start(self, user: UserEntry, mode: str, upstream: Upstream | None = None) -> None:
        if self._draining:
            raise ShuttingDown("the server is shutting down; reconnect to continue the conversation")
        await self._stop_turn(played_ms=None)
        self._cancel_tool_calls()
        self._estimated = None
        turn = Turn(
            upstream=upstream or self._upstream,
            settings=self.settings,
            history=tuple(self.history),
            user=user,
            max_audio_delta_bytes=self._limits.max_audio_delta_bytes,
        )
        observe.turn_committed(mode)
        self._turn = turn
        self._task = asyncio.create_task(self._run(turn), name=turn.turn_id)

    async def _run(self, turn: Turn) -> None:
        try:
            with self._turn_slot():
                if self.binding is not None:
                    self._journal = await self.binding.open_turn(turn.turn_id, self._cancel_asked)
                await self._relay(turn)
        except TakenOver as exc:
            self.outbox.put_now(exc)
            return
        except (TurnFailed, Overloaded, StoreUnavailable) as exc:
            # A refused turn is in-band here so that the conversation survives it.
            failure = (
                exc.failure
                if isinstance(exc, TurnFailed)
                else overloaded_failure(exc)
                if isinstance(exc, Overloaded)
                else UpstreamFailure(pb.ERROR_CODE_UNAVAILABLE, exc.message, True, 1000)
            )
            failed = turn.failed_before_start(failure)
            self._log_event(failed)
            await self.outbox.put((pb.ConverseResponse(event=failed), turn, turn.chunk_read_at))
        self._remember(turn)
        self._on_turn_end(turn)
        await self._turn_stored(turn)

    def _log_event(self, event: pb.TurnEvent) -> None:
        if self._journal is not None:
            self._journal.record(event)

    async def _turn_stored(self, turn: Turn) -> None:
        """The turn ended: its log is complete, the history with it is saved for a resume."""
        journal, self._journal = self._journal, None
        if journal is not None:
            await journal.close()
        try:
            await self._save(turn.turn_id)
        except TakenOver as exc:
            self.outbox.put_now(exc)

    def _cancel_asked(self, played_ms: int) -> None:
        """A resumer on another call asked to interrupt the running turn (the interrupt its client sent)."""
        task = asyncio.create_task(self._stop_asked(None if played_ms >= ALL_OF_IT_MS else played_ms))
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    async def _stop_asked(self, played_ms: int | None) -> None:
        await self._stop_turn(played_ms)

    async def _relay(self, turn: Turn) -> None:
        event: pb.TurnEvent | None = None
        try:
            async with aclosing(turn.events()) as events:
                async for event in events:
                    self._log_event(event)
                    await self.outbox.put((pb.ConverseResponse(event=event), turn, turn.chunk_read_at))
                    event = None
        except asyncio.CancelledError:
            if event is not None:
                self.outbox.put_now((pb.ConverseResponse(event=event), turn, turn.chunk_read_at))
            raise

    async def _stop_turn(self, played_ms: int | None) -> bool:
        """Interrupt the running turn, if any; True if one was running."""
        task, turn = self._task, self._turn
        if task is not None and self._following and not task.done():
            return await self._stop_followed(task, played_ms)
        if task is None or turn is None or task.done():
            return False
        task.cancel()
        await asyncio.wait([task])
        if turn.finished:
            return False
        interrupted = turn.interrupted(played_ms)
        await truncate_heard(self._upstream, interrupted.completed.played_ms)
        self._log_event(interrupted)
        self.outbox.put_now((pb.ConverseResponse(event=interrupted), turn, turn.chunk_read_at))
        self._remember(turn)
        self._on_turn_end(turn)
        await self._turn_stored(turn)
        return True

    def follow(self, turn_id: str, after: int) -> None:
        """After a resume: deliver the rest of the turn an earlier call ran (events after `after`), then
        continue from the history its end left. New input waits for it (an interrupt cancels it)."""
        self._following = turn_id
        self._task = asyncio.create_task(self._follow(turn_id, after), name=f"follow {turn_id}")

    async def _follow(self, turn_id: str, after: int) -> None:
        assert self.binding is not None
        store, conversation_id = self.binding.store, self.conversation_id
        try:
            written = False  # the turn's end came from its writer, which saves the history after it
            async for event in follow_turn(store, conversation_id, turn_id, after):
                written = event.completed.error.message != CUT_GONE
                await self.outbox.put((pb.ConverseResponse(event=event), None, time.perf_counter()))
            if written:
                config = pb.ConverseConfig.FromString(await wait_saved(store, conversation_id, turn_id))
                self.history = await history_entries_off_loop(config.history, self._limits)
        except StoreUnavailable as exc:
            self.outbox.put_now(exc)
        finally:
            self._following = ""

    async def _stop_followed(self, task: asyncio.Task[None], played_ms: int | None) -> bool:
        """Interrupt a followed turn: its writer (another call, maybe another process) stops it."""
        assert self.binding is not None
        turn_id = self._following
        played = ALL_OF_IT_MS if played_ms is None else played_ms
        try:
            await self.binding.store.request_cancel(self.conversation_id, turn_id, played)
        except StoreUnavailable as exc:
            self.outbox.put_now(exc)
        done, _ = await asyncio.wait([task], timeout=CANCEL_WAIT_SECONDS)
        if not done:
            task.cancel()
            await asyncio.wait([task])
        return True

    @property
    def resume_grace_seconds(self) -> float:
        """How long the client asked a running answer to outlive its call (config.resume_grace_ms)."""
        return self._config.resume_grace_ms / 1000

    def orphan(self, grace_seconds: float) -> asyncio.Task[None] | None:
        """The call ended while a turn runs: keep it running (its events going to the store only) for a
        resume, up to `grace_seconds`; then it is cut. None when there is nothing to keep."""
        task, turn = self._task, self._turn
        binding = self.binding
        if (
            grace_seconds <= 0
            or binding is None
            or binding.broken
            or self._journal is None
            or task is None
            or turn is None
            or task.done()
            or self._following
        ):
            return None
        self.outbox.discard()
        self._new_recording().close()
        return asyncio.create_task(self._orphaned(task, turn, grace_seconds), name=f"orphan {turn.turn_id}")

    async def _orphaned(self, task: asyncio.Task[None], turn: Turn, grace_seconds: float) -> None:
        try:
            await asyncio.wait([task], timeout=grace_seconds)
            while self._side_tasks:  # an interrupt a resumer asked for
                await asyncio.wait(list(self._side_tasks))
            if task.done() or turn.finished:
                return
            task.cancel()
            await asyncio.wait([task])
            await self._cut(turn, CUT_GRACE)
        finally:
            await self.close()

    async def _cut(self, turn: Turn, message: str) -> None:
        """A turn stopped with nobody to hear it: its log ends with a cut, for a resume."""
        if turn.finished or self._journal is None:
            return
        interrupted = turn.interrupted(None)
        cut = cut_event(turn.turn_id, interrupted.sequence, interrupted.completed.transcript, message)
        turn.completion = cut.completed
        self._log_event(cut)
        await self._turn_stored(turn)

    async def _interrupt(self, played_ms: int) -> None:
        if await self._stop_turn(played_ms):
            return
        if self._estimated is not None:
            await truncate_heard(self._upstream, played_ms)
            self._correct_estimate(played_ms)
            return
        self._cancel_tool_calls()
        # The answer had fully arrived but the listener stopped it: forget what they never heard.
        if self._last_answer is not None:
            index, audio_ms = self._last_answer
            entry = self.history[index]
            if isinstance(entry, AssistantEntry) and played_ms < audio_ms:
                self.history[index] = AssistantEntry(heard_part(entry.text, played_ms, audio_ms))
                await truncate_heard(self._upstream, played_ms)
                self._on_heard_part(played_ms)
            self._last_answer = None

    def _correct_estimate(self, played_ms: int) -> None:
        """The client said how much of the answer stopped by voice it played: keep that part."""
        assert self._estimated is not None
        index, transcript, audio_ms = self._estimated
        self._estimated = None
        text = heard_part(transcript, played_ms, audio_ms)
        present = index < len(self.history) and isinstance(self.history[index], AssistantEntry)
        if present and text:
            self.history[index] = AssistantEntry(text)
        elif present:
            del self.history[index]
        elif text:
            self.history.insert(index, AssistantEntry(text))

    def _remember(self, turn: Turn) -> None:
        completion = turn.completion
        if completion is None or completion.reason == pb.FINISH_REASON_ERROR:
            return  # A failed turn is retried by the user; keeping it would duplicate their message.
        if turn.user.text or turn.user.audio is not None:  # a continuation has no new input
            self.history.append(turn.user)
        audio_ms = completion.audio_samples * 1000 // SAMPLE_RATE_HZ
        if completion.reason == pb.FINISH_REASON_INTERRUPTED:
            text = heard_part(completion.transcript, completion.played_ms, audio_ms)
            if text:
                self.history.append(AssistantEntry(text))
            self._last_answer = None
        else:
            calls = tuple(CalledTool(call.id, call.name, call.arguments) for call in completion.tool_calls)
            self.history.append(
                AssistantEntry(completion.transcript, completion.audio_id, completion.audio_expires_at, calls)
            )
            self._pending.expect(calls)
            self._last_answer = (len(self.history) - 1, audio_ms) if audio_ms else None
        self._forget_old_recordings()

    def _forget_old_recordings(self) -> None:
        kept = 0
        for index in range(len(self.history) - 1, -1, -1):
            entry = self.history[index]
            if isinstance(entry, UserEntry) and entry.audio is not None:
                kept += len(entry.audio.data_b64)
                if kept > MAX_HISTORY_AUDIO_BYTES:
                    self.history[index] = UserEntry(entry.text or "(an earlier spoken message)", None)

    async def finish(self) -> None:
        """The client sent its last message: let the running answer end."""
        if self._task is not None:
            await asyncio.wait([self._task])

    async def drain(self) -> None:
        """The server is stopping: let the running answer end, then end the call so the client reconnects."""
        self._draining = True
        await self.finish()
        self.outbox.put_now(
            ShuttingDown("the server is shutting down; reconnect to continue the conversation")
        )

    def taken_over(self) -> None:
        """A newer call resumed this conversation: end this call (ABORTED); a running turn is orphaned."""
        self.outbox.put_now(TakenOver(TAKEN_OVER))

    def cancel(self) -> None:
        """The call is over: stop the running answer now; its task closes the upstream connection."""
        self._new_recording().close()
        if self._task is not None:
            self._task.cancel()
        for task in self._side_tasks:
            task.cancel()

    async def close(self) -> None:
        """The call is over: stop the running answer and wait until its upstream connection is closed;
        a resume of it finds it cut."""
        self.cancel()
        if self._task is not None:
            await asyncio.wait([self._task])
        if self._turn is not None and self._journal is not None:
            await self._cut(self._turn, CUT_CALL_ENDED)
        await end_conversation(self._upstream, self._shared_upstream)


_PCM_BYTES_PER_MS = 48  # 24 kHz mono pcm16, the Realtime API's input


def _check_upstream_detection(upstream: Upstream, model: str, tools: bool) -> None:
    """Upstream turn detection needs the Realtime API behind `model`, and no tools (their results are
    turns the gateway would have to start on the upstream's session: not built)."""
    if getattr(resolve(upstream, model), "conversation", None) is None:
        raise InvalidInput(
            f"turn_detection.type upstream_server_vad and upstream_semantic_vad need the Realtime upstream;"
            f" model {model!r} is answered by Chat Completions (use server_vad)",
            "config.turn_detection.type",
        )
    if tools:
        raise InvalidInput("tools are not supported with upstream turn detection yet", "config.turn.tools")


def _check_upstream_format(audio_format: pb.AudioFormat) -> None:
    if audio_format.encoding != pb.AUDIO_ENCODING_PCM16:
        raise InvalidInput(
            "upstream turn detection needs pcm16 audio chunks (format.encoding)", "audio.format.encoding"
        )
    if audio_format.sample_rate_hz != OUTPUT_PCM16.sample_rate_hz:
        raise InvalidInput(
            "upstream turn detection needs 24000 Hz audio (the Realtime API's input rate)",
            "audio.format.sample_rate_hz",
        )
    if audio_format.channels not in (0, 1):
        raise InvalidInput("pcm16 audio must be mono", "audio.format.channels")


def overloaded_failure(exc: Overloaded) -> UpstreamFailure:
    """A turn refused by our own limit, as an in-band, retryable turn error with its delay."""
    return UpstreamFailure(pb.ERROR_CODE_RESOURCE_EXHAUSTED, exc.message, True, exc.retry_after_ms)


async def _decoded(decoder: StreamDecoder) -> pb.AudioInput:
    """The end of a streamed recording decoded (off the event loop), as 24 kHz pcm16."""
    try:
        decoded = await asyncio.to_thread(decoder.finish)
    except DecodeLimit as exc:
        raise TooLarge(f"recording refused: {exc}") from exc
    except AudioFormatError as exc:
        raise InvalidInput(f"unreadable recording: {exc}") from exc
    return pb.AudioInput(data=decoded.pcm, format=OUTPUT_PCM16)


def heard_part(transcript: str, played_ms: int, audio_ms: int) -> str:
    """The part of a transcript the listener heard, estimated from how much of the audio played."""
    if audio_ms <= 0 or played_ms >= audio_ms:
        return transcript
    cut = len(transcript) * played_ms // audio_ms
    # Cut at a word boundary so the model is not handed half a word.
    space = transcript.rfind(" ", 0, cut + 1)
    text = transcript[: space if space > 0 else cut].rstrip()
    return f"{text}…" if text else ""
