"""The AudioChatService servicer: thin. It admits calls, validates, runs turns; `errors` maps failures."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing, contextmanager

import grpc

from audiochat.v1 import audiochat_pb2 as pb
from audiochat.v1 import audiochat_pb2_grpc as pb_grpc
from service import metrics, observe
from service.admission import DEFAULT_MAX_CONVERSATIONS, Admission, let_client_finish_writing
from service.api_keys import AUTHORIZATION, bearer_token
from service.conversation import Conversation
from service.conversation_resume import Binding, ResumeSettings
from service.errors import (
    NotOwner,
    Overloaded,
    ShuttingDown,
    StoreUnavailable,
    TakenOver,
    TurnFailed,
    UnknownConversation,
    WrongState,
    abort,
)
from service.registration import reject_malformed
from service.state.conversations import Attached, owner_digest
from service.turn import Turn
from service.turn_input import (
    Defaults,
    Limits,
    history_entries_off_loop,
    input_required,
    resolve_settings,
    user_entry_off_loop,
)
from service.upstream import Upstream

log = logging.getLogger(__name__)
ServicerContext = grpc.aio.ServicerContext[object, object]
GRACE_OVER = "the server is shutting down and its drain grace is over; retry on another instance"


def transport_of(context: ServicerContext) -> str:
    """The edge transport a call came through (bounded to known names), for logs and metrics."""
    for key, value in context.invocation_metadata() or ():
        if key == observe.TRANSPORT_METADATA_KEY and value in observe.TRANSPORTS:
            return str(value)
    return "grpc"


class AudioChatServicer(pb_grpc.AudioChatServiceServicer):
    """Implements StreamTurn and Converse over one upstream."""

    def __init__(
        self,
        upstream: Upstream,
        *,
        defaults: Defaults,
        limits: Limits,
        max_streams: int,
        max_conversations: int = DEFAULT_MAX_CONVERSATIONS,
        resume: ResumeSettings | None = None,
    ) -> None:
        self._upstream = upstream
        self._defaults = defaults
        self._limits = limits
        self.admission = Admission(max_turns=max_streams, max_conversations=max_conversations)
        self._active = 0
        self._conversations: set[Conversation] = set()
        self._calls: set[asyncio.Task[object]] = set()  # the handler tasks of the calls being served
        self.idle = asyncio.Event()  # set while no call is being served
        self.idle.set()
        self._cutting = False
        self._resume = resume  # None: conversations cannot be resumed
        self._held: dict[str, Conversation] = {}  # conversation id -> the call holding it here
        # Turns kept running after their call ended, for a resume (each ends within the orphan grace).
        self._orphans: dict[asyncio.Task[None], Conversation] = {}

    @property
    def draining(self) -> bool:
        """Whether a drain has started (new calls are refused UNAVAILABLE)."""
        return self.admission.draining

    @property
    def active_streams(self) -> int:
        """Calls being served now."""
        return self._active

    @property
    def running_turns(self) -> int:
        """Turns running now (StreamTurn calls and conversations' turns)."""
        return self.admission.running_turns

    @contextmanager
    def _serving(self, meter: metrics.TransportMetrics) -> Iterator[None]:
        task = asyncio.current_task()
        assert task is not None
        self._calls.add(task)
        self._active += 1
        self.idle.clear()
        meter.active.inc()
        try:
            yield
        finally:
            self._calls.discard(task)
            self._active -= 1
            meter.active.dec()
            if not self._active:
                self.idle.set()

    async def StreamTurn(
        self, request: pb.StreamTurnRequest, context: ServicerContext
    ) -> AsyncIterator[pb.TurnEvent]:
        """One turn: validate, then stream its events."""
        transport = transport_of(context)
        meter = metrics.for_transport(transport)
        try:
            reject_malformed(request)
            self.admission.refuse_if_draining()
            with self.admission.turn(meter.running), self._serving(meter):
                history = await history_entries_off_loop(request.history, self._limits)
                turn = Turn(
                    upstream=self._upstream,
                    settings=resolve_settings(request.config, self._defaults),
                    history=history,
                    user=await user_entry_off_loop(
                        request.input, self._limits, required=input_required(history)
                    ),
                    max_audio_delta_bytes=self._limits.max_audio_delta_bytes,
                )
                try:
                    async with aclosing(turn.events()) as events:
                        async for event in events:
                            read_at = turn.chunk_read_at
                            yield event
                            observe.event_sent(meter, turn, event, read_at)
                except TurnFailed as exc:
                    turn.failed_before_start(exc.failure)
                    raise
                finally:
                    observe.turn_finished(turn, transport, time.perf_counter())
        except grpc.aio.AbortError:
            raise
        except asyncio.CancelledError:
            await self._cut_short(context)
            raise
        except Exception as exc:
            await abort(context, exc)

    # The stub types a stream handler as a generator; writing through the context lets a second task read.
    async def Converse(  # type: ignore[override]
        self, request_iterator: AsyncIterator[pb.ConverseRequest], context: ServicerContext
    ) -> None:
        """One conversation: a reader task applies client messages while this task writes events."""
        transport = transport_of(context)
        meter = metrics.for_transport(transport)
        try:
            # Admitted after its config, so that a client that waits for ConversationStarted is never
            # writing when it is refused (see let_client_finish_writing).
            first = await anext(aiter(request_iterator), None)
            if first is None:
                return
            reject_malformed(first)
            with self.admission.conversation(meter.conversations), self._serving(meter):
                kind = first.WhichOneof("request")
                if kind not in ("config", "resume"):
                    raise WrongState("the first message of a conversation must be its config (or a resume)")
                owner = owner_digest(_bearer(context))
                resume = first.resume if kind == "resume" else None
                config = first.config
                epoch, followed = 0, ""
                if resume is not None:
                    if self._resume is None:
                        raise StoreUnavailable("this server keeps no conversations to resume")
                    attached = await _attach(self._resume, resume.conversation_id, owner)
                    config = pb.ConverseConfig.FromString(attached.config)
                    epoch, followed = attached.epoch, attached.turn_id
                history = await history_entries_off_loop(config.history, self._limits)
                conversation = Conversation(
                    config,
                    history=history,
                    upstream=self._upstream,
                    defaults=self._defaults,
                    limits=self._limits,
                    on_turn_end=lambda turn: observe.turn_finished(turn, transport, time.perf_counter()),
                    on_heard_part=lambda played_ms: observe.interrupted_after_end(meter, played_ms),
                    turn_slot=lambda: self.admission.turn(meter.running),
                    on_barge_in=lambda: observe.barge_in(meter),
                    conversation_id=resume.conversation_id if resume is not None else "",
                )
                if resume is None:
                    epoch = await self._store_new(conversation, owner)
                if epoch and self._resume is not None:
                    conversation.binding = Binding(
                        self._resume, conversation.conversation_id, owner, epoch, conversation.snapshot
                    )
                if followed:
                    assert resume is not None
                    conversation.follow(followed, resume.sequence if resume.turn_id == followed else 0)
                self._hold(conversation)
                try:
                    await self._converse(conversation, request_iterator, context, meter, resume is not None)
                finally:
                    self._conversations.discard(conversation)
                    if self._held.get(conversation.conversation_id) is conversation:
                        del self._held[conversation.conversation_id]
        except grpc.aio.AbortError:
            raise
        except asyncio.CancelledError:
            await self._cut_short(context)
            raise
        except (Overloaded, ShuttingDown, StoreUnavailable) as exc:
            await let_client_finish_writing(request_iterator)
            await abort(context, exc)
        except Exception as exc:
            await abort(context, exc)

    async def _store_new(self, conversation: Conversation, owner: str) -> int:
        """Keep a new conversation for a resume; its epoch, or 0 when the store failed (continue mode)."""
        if self._resume is None:
            return 0
        try:
            store, snapshot = self._resume.store, conversation.snapshot()
            return await store.create(conversation.conversation_id, owner, snapshot)
        except StoreUnavailable as exc:
            if self._resume.fail_without_store:
                raise
            log.warning("conversation %s is not resumable: %s", conversation.conversation_id, exc.message)
            return 0

    def _hold(self, conversation: Conversation) -> None:
        """This call holds the conversation now; an older call holding it here ends (the newer wins)."""
        self._conversations.add(conversation)
        older = self._held.get(conversation.conversation_id)
        if older is not None:
            older.taken_over()
        self._held[conversation.conversation_id] = conversation

    async def _converse(
        self,
        conversation: Conversation,
        request_iterator: AsyncIterator[pb.ConverseRequest],
        context: ServicerContext,
        meter: metrics.TransportMetrics,
        resumed: bool,
    ) -> None:
        started = pb.ConversationStarted(
            conversation_id=conversation.conversation_id, resumed=resumed, resumable=conversation.resumable
        )
        await context.write(pb.ConverseResponse(started=started))
        reader = asyncio.create_task(_read_requests(request_iterator, conversation))
        left = False  # the client went away, or a newer call took the conversation: a running turn goes on
        try:
            while (item := await conversation.outbox.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                response, turn, read_at = item
                await context.write(response)
                if turn is not None:
                    observe.event_sent(meter, turn, response.event, read_at)
        except (asyncio.CancelledError, TakenOver):
            left = not self._cutting
            raise
        finally:
            # Cancel before any await: this task may be cancelled again while it waits, and the turn
            # task (blocked on a full outbox when the client stopped reading) must still close its upstream.
            reader.cancel()
            # Only a client that asked for it (config.resume_grace_ms) has its answer outlive the call:
            # for any other, every way the call ends closes the upstream at once.
            grace = min(conversation.resume_grace_seconds, self._resume.orphan_seconds) if self._resume else 0
            orphan = conversation.orphan(grace) if left and grace > 0 else None
            if orphan is not None:
                self._orphans[orphan] = conversation
                orphan.add_done_callback(lambda task: self._orphans.pop(task, None))
            else:
                conversation.cancel()
            await asyncio.wait([reader])
            if orphan is None:
                await conversation.close()

    async def ListModels(
        self, request: pb.ListModelsRequest, context: ServicerContext
    ) -> pb.ListModelsResponse:
        """The upstream's models, or the configured default model when the upstream has no list."""
        try:
            models = await self._upstream.list_models()
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as exc:
            await abort(context, exc)
        if models is None:
            return pb.ListModelsResponse(models=[pb.Model(id=self._defaults.model)], from_upstream=False)
        return pb.ListModelsResponse(models=models, from_upstream=True)

    async def drain(self) -> None:
        """Stop taking calls; let each conversation finish its answer, then end it with UNAVAILABLE."""
        self.admission.draining = True
        await asyncio.gather(*(conversation.drain() for conversation in list(self._conversations)))

    async def close_store(self) -> None:
        """Release the conversation store's connections (the server stopped)."""
        if self._resume is not None:
            await self._resume.store.aclose()

    async def end_orphans(self, wait_seconds: float) -> None:
        """Stop the turns still running for a resume (their logs end cut), within `wait_seconds`."""
        orphans = list(self._orphans.items())
        for _, conversation in orphans:
            conversation.cancel()
        if orphans:
            await asyncio.wait([task for task, _ in orphans], timeout=wait_seconds)

    async def cut(self, wait_seconds: float) -> None:
        """The drain grace is over: end every call still served with UNAVAILABLE, within `wait_seconds`."""
        self._cutting = True
        calls = list(self._calls)
        for task in calls:
            task.cancel()
        if calls:
            await asyncio.wait(calls, timeout=wait_seconds)

    async def _cut_short(self, context: ServicerContext) -> None:
        """A call cancelled by `cut` (not by its client) ends UNAVAILABLE, so its client knows why."""
        if self._cutting:
            await abort(context, ShuttingDown(GRACE_OVER))


async def _attach(resume: ResumeSettings, conversation_id: str, owner: str) -> Attached:
    """The stored conversation for a resume, counted by result."""
    try:
        attached = await resume.store.attach(conversation_id, owner)
    except (UnknownConversation, NotOwner, StoreUnavailable) as exc:
        result = {UnknownConversation: "not_found", NotOwner: "not_owner"}.get(type(exc), "unavailable")
        metrics.CONVERSATION_RESUMES.labels(result).inc()
        raise
    metrics.CONVERSATION_RESUMES.labels("resumed").inc()
    return attached


def _bearer(context: ServicerContext) -> str | None:
    """The API key the call carries (whether or not this server checks keys): a conversation's owner."""
    for key, value in context.invocation_metadata() or ():
        if key == AUTHORIZATION:
            return bearer_token(str(value))
    return None


async def _read_requests(requests: AsyncIterator[pb.ConverseRequest], conversation: Conversation) -> None:
    try:
        async for request in requests:
            reject_malformed(request)
            await conversation.handle(request)
        await conversation.finish()
        conversation.outbox.put_now(None)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        conversation.outbox.put_now(exc)
