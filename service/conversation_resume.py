"""Conversation resume: one call's hold on its conversation in the store, the log of each turn it runs,
and the reading of a turn's log by a call that resumed the conversation (following it live).

A conversation's turn events go to the store as they are made (a background writer per turn, so the
answer never waits on the store); a resume replays the ones its client missed and follows the rest
while the writer runs. What the store cannot give (a writer that went away, a log over its cap) ends the
turn as cut: FINISH_REASON_ERROR, ERROR_CODE_UNAVAILABLE, retryable (see ConverseResume in the .proto).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass

from audiochat.v1 import audiochat_pb2 as pb
from service.errors import StoreUnavailable, TakenOver, UnknownConversation
from service.state.conversations import ConversationStore
from service.state.conversations_redis import LEASE_SECONDS
from service.tool_input import ToolEntry
from service.turn_input import AssistantEntry, Entry, UserEntry

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 0.25  # a running turn renews its lease and looks for a resumer's cancel this often
TAKEN_OVER = "this conversation was resumed by a newer connection"
CUT_GONE = "the answer was cut: the server streaming it stopped before its end; send the turn again"
CUT_GRACE = "the answer was cut: nobody resumed the conversation within its grace; send the turn again"
CUT_CALL_ENDED = "the answer was cut: its call ended and the server keeps no turn running without one"
CUT_TOO_LONG = "the answer was cut: it outgrew what the conversation store keeps for a resume"
# A resumer that asks for an interrupt waits this long for the writer's TurnCompleted before calling it cut.
CANCEL_WAIT_SECONDS = LEASE_SECONDS + 2.0
ALL_OF_IT_MS = 2**32 - 1  # an interrupt by a new input: the listener heard all that arrived


@dataclass(frozen=True, slots=True)
class ResumeSettings:
    """How conversations are kept for a resume (settings AUDIOCHAT_CONVERSATION_*, AUDIOCHAT_REDIS_*)."""

    store: ConversationStore
    orphan_seconds: float  # a turn whose call ended keeps running this long for a resume
    turn_log_bytes: int  # events of one turn the store keeps; past it the rest of the turn is not
    fail_without_store: bool  # AUDIOCHAT_REDIS_UNAVAILABLE=fail: refuse instead of carrying on unresumable


class Binding:
    """One call's hold on a stored conversation: it saves the history and logs turns while it holds the
    newest epoch. With AUDIOCHAT_REDIS_UNAVAILABLE=continue, a store failure makes the conversation
    unresumable and the call carries on without the store."""

    def __init__(
        self,
        settings: ResumeSettings,
        conversation_id: str,
        owner: str,
        epoch: int,
        snapshot: Callable[[], bytes],
    ) -> None:
        self.settings = settings
        self.store = settings.store
        self.conversation_id = conversation_id
        self.owner = owner
        self.epoch = epoch
        self._snapshot = snapshot
        self.broken = False

    def failed(self, exc: StoreUnavailable) -> None:
        """Carry on without the store (continue), or let the caller refuse (fail)."""
        if self.settings.fail_without_store:
            raise exc
        if not self.broken:
            log.warning("conversation %s is no longer resumable: %s", self.conversation_id, exc.message)
        self.broken = True

    async def save(self, snapshot: bytes, turn_id: str = "") -> None:
        """Store the history as it is now. At a turn's end (`turn_id`) this succeeds while that turn is
        still the conversation's latest, even from a call a resume replaced (the resumer waits for it);
        otherwise only while this call holds the conversation, else TakenOver."""
        if self.broken:
            return
        try:
            if turn_id:
                await self.store.save(self.conversation_id, snapshot, turn_id=turn_id)
            elif not await self.store.save(self.conversation_id, snapshot, epoch=self.epoch):
                raise TakenOver(TAKEN_OVER)
        except StoreUnavailable as exc:
            with suppress(StoreUnavailable):  # a failed save in fail mode: the next turn is refused
                self.failed(exc)

    async def open_turn(self, turn_id: str, on_cancel: Callable[[int], None]) -> TurnJournal | None:
        """The log of a new turn, or None without the store. TakenOver; StoreUnavailable in fail mode."""
        if self.broken and not self.settings.fail_without_store:
            return None
        try:
            try:
                opened = await self.store.open_turn(self.conversation_id, self.epoch, turn_id)
            except UnknownConversation:
                # Lost by the store (expired while the call was idle, or Redis restarted): kept again.
                self.epoch = await self.store.create(self.conversation_id, self.owner, self._snapshot())
                opened = await self.store.open_turn(self.conversation_id, self.epoch, turn_id)
            if not opened:
                raise TakenOver(TAKEN_OVER)
        except StoreUnavailable as exc:
            self.failed(exc)
            return None
        self.broken = False
        return TurnJournal(self, turn_id, on_cancel)


class TurnJournal:
    """Writes one turn's events to the store in the background, in order, batched; renews its lease."""

    def __init__(self, binding: Binding, turn_id: str, on_cancel: Callable[[int], None]) -> None:
        self._binding = binding
        self.turn_id = turn_id
        self._on_cancel = on_cancel
        self._pending: list[bytes] = []
        self._next = 1  # sequence of the first pending event
        self._bytes = 0
        self._full = False
        self._closing = False
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._write(), name=f"journal {turn_id}")

    def record(self, event: pb.TurnEvent) -> None:
        """Queue an event for the store (never waits). Past the turn's cap the log stops: a resume of this
        turn then ends it as cut."""
        if self._full or self._closing or self._task.done():
            return
        data = event.SerializeToString()
        self._bytes += len(data)
        if self._bytes > self._binding.settings.turn_log_bytes:
            # The log ends here, with the cut a resume of this turn delivers.
            self._full = self._closing = True
            cut = cut_event(self.turn_id, event.sequence, "", CUT_TOO_LONG)
            self._pending.append(cut.SerializeToString())
        else:
            self._pending.append(data)
        self._wake.set()

    async def close(self) -> None:
        """Write what is queued, then end the turn's lease (bounded by the store's timeouts)."""
        self._closing = True
        self._wake.set()
        await asyncio.wait([self._task])

    def cancel(self) -> None:
        """Stop writing now (the process is stopping)."""
        self._task.cancel()

    async def _write(self) -> None:
        binding, store = self._binding, self._binding.store
        asked = False
        try:
            while True:
                if not self._pending and not self._closing:
                    with suppress(TimeoutError):
                        async with asyncio.timeout(HEARTBEAT_SECONDS):
                            await self._wake.wait()
                self._wake.clear()
                batch, self._pending = self._pending, []
                cancel = await store.append(binding.conversation_id, self.turn_id, self._next, batch)
                self._next += len(batch)
                if cancel is not None and not asked:
                    asked = True
                    self._on_cancel(cancel)
                if self._closing and not self._pending:
                    break
            await store.close_turn(binding.conversation_id, self.turn_id)
        except StoreUnavailable as exc:
            self._pending.clear()
            with suppress(StoreUnavailable):
                binding.failed(exc)


async def follow_turn(
    store: ConversationStore, conversation_id: str, turn_id: str, after: int
) -> AsyncIterator[pb.TurnEvent]:
    """The events of a stored turn after sequence `after`, live until its TurnCompleted; a cut
    TurnCompleted when the log ends without one (its writer is gone). StoreUnavailable ends it too."""
    seen = 0
    transcript: list[str] = []
    while True:
        read = await store.read(conversation_id, turn_id, seen)
        for data in read.events:
            event = pb.TurnEvent.FromString(data)
            seen = event.sequence
            if event.HasField("text"):
                transcript.append(event.text.text)
            if event.sequence > after:
                yield event
            if event.HasField("completed"):
                return
        if not read.live and not read.events:
            # The client may have seen events its writer had not logged yet when it died.
            yield cut_event(turn_id, max(seen, after) + 1, "".join(transcript), CUT_GONE)
            return


def cut_event(turn_id: str, sequence: int, transcript: str, message: str) -> pb.TurnEvent:
    """The TurnCompleted of a turn whose rest cannot be delivered: retryable UNAVAILABLE."""
    error = pb.TurnError(code=pb.ERROR_CODE_UNAVAILABLE, message=message, retryable=True)
    completed = pb.TurnCompleted(reason=pb.FINISH_REASON_ERROR, transcript=transcript, error=error)
    return pb.TurnEvent(turn_id=turn_id, sequence=sequence, completed=completed)


async def wait_saved(store: ConversationStore, conversation_id: str, turn_id: str) -> bytes:
    """The stored config once the history includes `turn_id`'s end (its writer saves it just after its
    TurnCompleted), or as it is after CANCEL_WAIT_SECONDS (a writer that died before saving)."""
    deadline = time.monotonic() + CANCEL_WAIT_SECONDS
    while True:
        stored = await store.load(conversation_id)
        if stored.saved_turn_id == turn_id or time.monotonic() > deadline:
            return stored.config
        await asyncio.sleep(0.05)


def history_items(history: Iterable[Entry]) -> list[pb.HistoryItem]:
    """The conversation's history in the contract's form (what a resume validates and continues from)."""
    items: list[pb.HistoryItem] = []
    for entry in history:
        if isinstance(entry, UserEntry):
            message = pb.UserMessage(text=entry.text)
            if entry.audio is not None:
                encoding = pb.AUDIO_ENCODING_MP3 if entry.audio.format == "mp3" else pb.AUDIO_ENCODING_WAV
                data = base64.b64decode(entry.audio.data_b64)
                message.audio.CopyFrom(pb.AudioInput(data=data, format=pb.AudioFormat(encoding=encoding)))
            items.append(pb.HistoryItem(user=message))
        elif isinstance(entry, AssistantEntry):
            calls = [pb.ToolCall(id=c.id, name=c.name, arguments=c.arguments) for c in entry.tool_calls]
            assistant = pb.AssistantMessage(
                text=entry.text,
                audio_id=entry.audio_id,
                audio_expires_at=entry.audio_expires_at,
                tool_calls=calls,
            )
            items.append(pb.HistoryItem(assistant=assistant))
        elif isinstance(entry, ToolEntry):
            result = pb.ToolResult(tool_call_id=entry.tool_call_id, content=entry.content)
            items.append(pb.HistoryItem(tool_result=result))
    return items
