"""One turn: open the upstream, normalize its chunks, number the events, end with TurnCompleted."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from contextlib import AsyncExitStack, contextmanager

from audiochat.v1 import audiochat_pb2 as pb
from service.answer_audio import AnswerEncoder
from service.errors import TurnFailed, UpstreamFailure
from service.normalizer import MAX_AUDIO_DELTA_BYTES, SAMPLE_RATE_HZ, Normalizer, Outcome
from service.turn_input import Entry, TurnSettings, UserEntry
from service.upstream import AnswerStream, Upstream
from service.upstream_request import build_params, refers_to_audio_ids
from service.upstream_routing import api_name, takes_audio_ids

log = logging.getLogger(__name__)


@contextmanager
def _encoder_for(settings: TurnSettings) -> Iterator[AnswerEncoder | None]:
    """The answer's encoder, or None for pcm16 (passed on as the upstream sends it); closed at the end."""
    if not settings.speaks or settings.output_format.encoding == pb.AUDIO_ENCODING_PCM16:
        yield None
        return
    encoder = AnswerEncoder(settings.output_format)
    try:
        yield encoder
    finally:
        encoder.close()


class Turn:
    """Runs one answer. Iterate `events()` once; on interrupt, end it with `interrupted()`."""

    def __init__(
        self,
        *,
        upstream: Upstream,
        settings: TurnSettings,
        history: Sequence[Entry],
        user: UserEntry,
        clock: Callable[[], float] = time.perf_counter,
        max_audio_delta_bytes: int = MAX_AUDIO_DELTA_BYTES,
    ) -> None:
        self.turn_id = f"turn_{uuid.uuid4().hex}"
        self.settings = settings
        self.user = user
        self._upstream = upstream
        self._history = history
        self._clock = clock
        self._normalizer = Normalizer(max_audio_delta_bytes)
        self._sequence = 0
        self.accepted_at = clock()
        self.upstream_first_byte_at: float | None = None
        self.first_audio_at: float | None = None
        self.first_text_at: float | None = None
        # Server VAD: when the user stopped speaking (perf_counter), for the wait users feel.
        self.speech_ended_at: float | None = None
        self.upstream_request_id = ""
        # Which API answers (`chat_completions` or `realtime`): the bounded `upstream` metric label.
        self.upstream_api = api_name(upstream, settings.model)
        self.completion: pb.TurnCompleted | None = None
        # When the chunk behind the event being handed out was read: the start of the gateway's own latency.
        self.chunk_read_at = self.accepted_at

    async def events(self) -> AsyncGenerator[pb.TurnEvent, None]:
        """The turn's events. Raises TurnFailed if the upstream refuses before the answer starts."""
        async with AsyncExitStack() as stack:
            try:
                stream = await self._open(stack)
            except TurnFailed as exc:
                # A refusal has a request id too (the SDK's APIStatusError.request_id): the log needs it.
                self.upstream_request_id = str(getattr(exc.__cause__, "request_id", None) or "")
                raise
            self.chunk_read_at = self._clock()
            self.upstream_request_id = stream.request_id
            yield self._number(pb.TurnEvent(started=self._started()))
            encoder = stack.enter_context(_encoder_for(self.settings))
            error: pb.TurnError | None = None
            try:
                async for chunk in stream.chunks():
                    self.chunk_read_at = self._clock()
                    if self.upstream_first_byte_at is None:
                        self.upstream_first_byte_at = self.chunk_read_at
                    for event in self._normalizer.feed(chunk):
                        if encoder is not None and event.HasField("audio"):
                            for delta in encoder.feed(event.audio):
                                yield self._number(pb.TurnEvent(audio=delta))
                        else:
                            yield self._number(event)
                    if self._normalizer.failed:
                        break
            except TurnFailed as exc:
                error = exc.failure.turn_error()
            # Even a failed answer ends as a whole file: what arrived stays playable to its end.
            for delta in encoder.finish() if encoder is not None else ():
                yield self._number(pb.TurnEvent(audio=delta))
            outcome = self._normalizer.finish(stream.saw_done)
            if error is not None:
                outcome.reason, outcome.error = pb.FINISH_REASON_ERROR, error
        yield self._complete(outcome)

    async def _open(self, stack: AsyncExitStack) -> AnswerStream:
        # The Realtime API has no use for Chat Completions audio ids: earlier answers go as their text.
        use_ids = takes_audio_ids(self._upstream, self.settings.model)
        try:
            return await stack.enter_async_context(self._upstream.open(self._params(use_audio_ids=use_ids)))
        except TurnFailed as exc:
            # Ids can expire before their announced time; the transcripts say the same thing.
            if exc.failure.upstream_code != "audio_not_found" or not refers_to_audio_ids(self._history):
                raise
            log.info("turn %s: an audio id expired early; retrying with transcripts", self.turn_id)
            return await stack.enter_async_context(self._upstream.open(self._params(use_audio_ids=False)))

    def _params(self, *, use_audio_ids: bool) -> dict[str, object]:
        return build_params(
            self.settings, self._history, self.user, now=time.time(), use_audio_ids=use_audio_ids
        )

    def _started(self) -> pb.TurnStarted:
        return pb.TurnStarted(
            model=self.settings.model,
            audio_format=self.settings.output_format if self.settings.speaks else None,
            input_audio_ms=self.user.audio.duration_ms if self.user.audio else 0,
            upstream_request_id=self.upstream_request_id,
        )

    def _number(self, event: pb.TurnEvent) -> pb.TurnEvent:
        self._sequence += 1
        event.turn_id = self.turn_id
        event.sequence = self._sequence
        return event

    @property
    def usage(self) -> pb.Usage | None:
        """Token counts, if the upstream reported them."""
        return self._normalizer.usage

    def _complete(self, outcome: Outcome, played_ms: int = 0) -> pb.TurnEvent:
        self.chunk_read_at = self._clock()
        self.completion = pb.TurnCompleted(
            reason=outcome.reason,
            transcript=outcome.transcript,
            audio_id=outcome.audio_id,
            audio_expires_at=outcome.audio_expires_at,
            audio_samples=outcome.audio_samples,
            played_ms=played_ms,
            error=outcome.error,
            tool_calls=outcome.tool_calls,
        )
        return self._number(pb.TurnEvent(completed=self.completion))

    def interrupted(self, played_ms: int | None) -> pb.TurnEvent:
        """The last event of a turn stopped by the client; `played_ms` None means all that arrived."""
        state = self._normalizer
        received_ms = state.audio_samples * 1000 // SAMPLE_RATE_HZ
        heard = received_ms if played_ms is None else min(played_ms, received_ms)
        outcome = Outcome(
            reason=pb.FINISH_REASON_INTERRUPTED,
            transcript=state.transcript(),
            audio_id=state.audio_id,
            audio_expires_at=state.audio_expires_at,
            audio_samples=state.audio_samples,
        )
        return self._complete(outcome, played_ms=heard)

    def failed_before_start(self, failure: UpstreamFailure) -> pb.TurnEvent:
        """The only event of a turn the upstream refused (used where a turn failure is in-band)."""
        return self._complete(
            Outcome(pb.FINISH_REASON_ERROR, "", "", 0, 0, error=failure.turn_error()),
        )

    @property
    def finished(self) -> bool:
        """Whether TurnCompleted was made."""
        return self.completion is not None
