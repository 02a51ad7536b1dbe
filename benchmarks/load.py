"""The load generator: N users, each running turns over one transport, for a fixed window.

Users start evenly spread over a ramp and, by default, pause between turns for a random think time
(uniform between half and one and a half times its mean, from a seeded generator): with turns back to back
(`think_seconds=0`, the stress model) streams fall into step within a minute and every burst queues, which
no real population of speakers does. What is counted is what arrives inside the window after the ramp.
When the window closes the turns still running are cancelled: their audio so far is still checked for
order and integrity, only the full-count check needs a whole turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from benchmarks import gc_pauses
from benchmarks.pieces import Pacing, PieceChecker, filler
from benchmarks.processes import Usage, sample

ERROR_PAUSE_SECONDS = 0.2  # a failing user backs off a little instead of spinning
THINK_SPREAD = 0.5  # think time is uniform in [mean * (1 - spread), mean * (1 + spread)]
SEED = 11  # the same think times in every run, so two runs differ by what they measure only


class TurnProbe:
    """What a client reports about one turn while it streams."""

    __slots__ = ("_recorder", "checker", "first_audio_ns", "started_ns")

    def __init__(self, recorder: Recorder) -> None:
        self._recorder = recorder
        self.checker = PieceChecker(recorder.pacing, recorder.filler)
        self.started_ns = time.time_ns()
        self.first_audio_ns = 0

    def audio(self, data: bytes) -> None:
        """An audio delta arrived."""
        now = time.time_ns()
        recorder = self._recorder
        counted = recorder.window_start_ns <= now < recorder.window_end_ns
        if not self.first_audio_ns:
            self.first_audio_ns = now
            if counted:
                recorder.first_audio_ns.append(now - self.started_ns)
        self.checker.feed(data, now, recorder.latencies_ns if counted else recorder.discarded)
        if counted:
            recorder.events += 1
            recorder.audio_bytes += len(data)

    def other(self) -> None:
        """A non-audio event (text, started, usage, completed) arrived."""
        now = time.time_ns()
        recorder = self._recorder
        if recorder.window_start_ns <= now < recorder.window_end_ns:
            recorder.events += 1


@dataclass
class Recorder:
    """Everything one run counts; numbers inside the window only, integrity over every turn."""

    pacing: Pacing
    filler: bytes = b""
    window_start_ns: int = 0
    window_end_ns: int = 0
    events: int = 0
    audio_bytes: int = 0
    latencies_ns: list[int] = field(default_factory=list)
    first_audio_ns: list[int] = field(default_factory=list)
    discarded: list[int] = field(default_factory=list)
    turns_completed: int = 0
    turns_cancelled: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    bad_pieces: int = 0
    incomplete_turns: int = 0
    stream_ns: int = 0  # time turns were open inside the window, summed over users

    def __post_init__(self) -> None:
        self.filler = filler(self.pacing)

    def probe(self) -> TurnProbe:
        """A probe for a turn starting now."""
        self.discarded.clear()  # only kept so the hot path need not branch
        return TurnProbe(self)

    def turn_ended(self, probe: TurnProbe) -> None:
        """Count the part of the turn's lifetime that fell inside the window (however it ended)."""
        start = max(probe.started_ns, self.window_start_ns)
        end = min(time.time_ns(), self.window_end_ns)
        self.stream_ns += max(0, end - start)

    def completed(self, probe: TurnProbe) -> None:
        """The turn ended normally: all its audio must have arrived, in order."""
        self.turns_completed += 1
        self.bad_pieces += probe.checker.bad
        if not probe.checker.complete(self.pacing):
            self.incomplete_turns += 1

    def cancelled(self, probe: TurnProbe) -> None:
        """We stopped the turn at the end of the window: what arrived must still be in order."""
        self.turns_cancelled += 1
        self.bad_pieces += probe.checker.bad

    def error(self, kind: str) -> None:
        """A turn failed; `kind` is short and bounded (a status name or exception class)."""
        self.errors[kind] += 1


class Session(Protocol):
    """One user's connection state over a transport."""

    async def turn(self, probe: TurnProbe) -> None:
        """Run one turn to its end; raise TurnError (or any exception) if it failed."""
        ...

    async def close(self) -> None:
        """Release what the session holds."""
        ...


class Transport(Protocol):
    """A way to reach answers: the gateway over one of its protocols, or the simulator directly."""

    name: str

    def session(self) -> Session:
        """A new user."""
        ...

    async def close(self) -> None:
        """Release shared connections."""
        ...


class TurnError(Exception):
    """A turn that ended wrongly; its message is the bounded kind counted in the report."""


@dataclass
class RunResult:
    """One transport at one concurrency: the raw numbers; report.py derives what is compared."""

    transport: str
    streams: int
    window_seconds: float
    events: int
    audio_bytes: int
    latencies_ms: np.ndarray = field(repr=False)
    first_audio_ms: np.ndarray = field(repr=False)
    turns_completed: int
    turns_cancelled: int
    errors: dict[str, int]
    bad_pieces: int
    incomplete_turns: int
    think_seconds: float = 0.0
    mean_active_streams: float = 0.0
    gateway_cpu_seconds: float | None = None
    gateway_rss_before: int | None = None
    gateway_rss_during: int | None = None
    load_cpu_fraction: float | None = None  # client and simulator together, in cores
    client_cpu_fraction: float | None = None  # this process alone, share of one core
    gc_pauses: dict[str, Any] | None = None  # per generation, from the gateway's own metrics


def think_time(rng: random.Random, mean_seconds: float) -> float:
    """One pause between turns: uniform around the mean, zero when the mean is zero."""
    if mean_seconds <= 0:
        return 0.0
    return rng.uniform(mean_seconds * (1 - THINK_SPREAD), mean_seconds * (1 + THINK_SPREAD))


async def _user(
    transport: Transport,
    recorder: Recorder,
    delay: float,
    stop_at: float,
    think_seconds: float,
    rng: random.Random,
) -> None:
    await asyncio.sleep(delay)
    session = transport.session()
    try:
        while time.monotonic() < stop_at:
            probe = recorder.probe()
            try:
                await session.turn(probe)
            except asyncio.CancelledError:
                recorder.turn_ended(probe)
                recorder.cancelled(probe)
                raise
            except Exception as exc:
                recorder.turn_ended(probe)
                recorder.error(str(exc) if isinstance(exc, TurnError) else type(exc).__name__)
                await asyncio.sleep(ERROR_PAUSE_SECONDS)
            else:
                recorder.turn_ended(probe)
                recorder.completed(probe)
            await asyncio.sleep(think_time(rng, think_seconds))
    finally:
        with contextlib.suppress(Exception):
            await session.close()


async def run_load(
    transport: Transport,
    streams: int,
    pacing: Pacing,
    *,
    ramp_seconds: float,
    window_seconds: float,
    think_seconds: float = 0.0,
    gateway_pid: int | None = None,
    load_pids: tuple[int, ...] = (),
    metrics_url: str = "",
) -> RunResult:
    """Run `streams` users over `transport`; sample the gateway's and load side's /proc around the window.

    `gateway_pid` is the process whose CPU is charged to the row (the gateway, the relay, LiteLLM);
    `load_pids` are the other load-side processes (the simulator), counted with this one. With
    `metrics_url` (a gateway's /metrics), its garbage-collection pauses inside the window are recorded.
    """
    recorder = Recorder(pacing)
    rng = random.Random(SEED)
    start_ns = time.time_ns()
    recorder.window_start_ns = start_ns + int(ramp_seconds * 1e9)
    recorder.window_end_ns = recorder.window_start_ns + int(window_seconds * 1e9)
    stop_at = time.monotonic() + ramp_seconds + window_seconds
    own: Callable[[], list[Usage]] = lambda: [sample(pid) for pid in (os.getpid(), *load_pids)]  # noqa: E731
    rss_before = sample(gateway_pid).rss_bytes if gateway_pid else None
    users = [
        asyncio.create_task(
            _user(transport, recorder, ramp_seconds * i / streams, stop_at, think_seconds, rng)
        )
        for i in range(streams)
    ]
    try:
        await asyncio.sleep(max(0.0, (recorder.window_start_ns - time.time_ns()) / 1e9))
        gateway_start = sample(gateway_pid) if gateway_pid else None
        load_start = own()
        gc_start = await asyncio.to_thread(gc_pauses.snapshot, metrics_url) if metrics_url else None
        await asyncio.sleep(max(0.0, (recorder.window_end_ns - time.time_ns()) / 1e9))
        gateway_end = sample(gateway_pid) if gateway_pid else None
        load_end = own()
        gc_end = await asyncio.to_thread(gc_pauses.snapshot, metrics_url) if metrics_url else None
    finally:
        for user in users:
            user.cancel()
        await asyncio.gather(*users, return_exceptions=True)
        await transport.close()
    load_cpu = sum(
        end.cpu_seconds - begin.cpu_seconds for begin, end in zip(load_start, load_end, strict=True)
    )
    return RunResult(
        transport=transport.name,
        streams=streams,
        window_seconds=window_seconds,
        events=recorder.events,
        audio_bytes=recorder.audio_bytes,
        latencies_ms=np.asarray(recorder.latencies_ns, dtype=np.float64) / 1e6,
        first_audio_ms=np.asarray(recorder.first_audio_ns, dtype=np.float64) / 1e6,
        turns_completed=recorder.turns_completed,
        turns_cancelled=recorder.turns_cancelled,
        errors=dict(recorder.errors),
        bad_pieces=recorder.bad_pieces,
        incomplete_turns=recorder.incomplete_turns,
        think_seconds=think_seconds,
        mean_active_streams=recorder.stream_ns / 1e9 / window_seconds,
        gateway_cpu_seconds=(
            gateway_end.cpu_seconds - gateway_start.cpu_seconds if gateway_start and gateway_end else None
        ),
        gateway_rss_before=rss_before,
        gateway_rss_during=gateway_end.rss_bytes if gateway_end else None,
        load_cpu_fraction=load_cpu / window_seconds,
        client_cpu_fraction=(load_end[0].cpu_seconds - load_start[0].cpu_seconds) / window_seconds,
        gc_pauses=gc_pauses.between(gc_start, gc_end)
        if gc_start is not None and gc_end is not None
        else None,
    )
