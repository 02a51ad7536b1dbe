"""`make soak`: every transport under steady load with faults injected at random, for about ten minutes.

A real `audiochat serve` process (core and edge) in front of the fault upstream (tests/fault_upstream.py),
driven over gRPC StreamTurn, gRPC Converse, SSE, WebSocket and the OpenAI-compatible route at once. Most
turns are whole answers whose audio is `pattern_pcm`, so every byte of a completed turn is checked; the
rest are faults, upstream side (5xx, 429 with retry-after, a stall, a reset, a malformed chunk, no
headers) and client side (cancel mid-answer, a reader that pauses). It reports events relayed, bytes lost
or reordered in completed turns (must be 0), upstream connections left open at the end (0), the time
from each client's cancel to the upstream seeing its request closed, and the gateway's memory every
--sample-seconds beside what its SSE resume store holds, with a verdict (tests/soak_memory.py says what
"flat" means).

    python -m tests.soak --minutes 10 --events 1000000 [--workers 4]

It runs for --minutes and until --events were relayed (never past three times --minutes: a busy machine
reports fewer events rather than running on). To tell a bounded cache filling from a leak:
--resume-seconds/--resume-bytes shrink the resume store; --memory-reports DIR has the gateway write a
memory report (service/memory_report.py) at every sample, and --gateway-env PYTHONTRACEMALLOC=8 adds
tracemalloc's allocations by traceback to them (slow); --gateway-env MALLOC_ARENA_MAX=2 and the like try
allocator settings.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import logging
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
from websockets.asyncio.client import connect

from audiochat.v1 import audiochat_pb2 as pb
from audiochat.v1 import audiochat_pb2_grpc as pb_grpc
from benchmarks.processes import wait_ready
from tests.fault_upstream import FaultUpstream, pattern_pcm, script
from tests.soak_memory import MemoryWatch, rss_mib
from tests.upstream_server import fixture_events

REPO = Path(__file__).resolve().parent.parent
TRANSPORTS = ("stream_turn", "converse", "sse", "websocket", "compat")
BYTES_PER_SECOND = 48_000
# Upstream faults, by model; the rest of the turns are whole answers of 1 to 4 s.
UPSTREAM_FAULTS = (
    "status/500/server_error",
    "retry/1",
    "silent/14/audio_no_finish_reason",
    "reset/14/audio_no_finish_reason",
    "script/malformed",
    "hang",
)
CANCELLED_MODEL = "long/600"


@dataclass(frozen=True)
class Rates:
    """How often each kind of fault is injected, as a fraction of turns."""

    fault: float = 0.08  # an upstream fault
    cancel: float = 0.04  # the client abandons the turn after its first audio
    pause: float = 0.04  # the client's reader stops for a while mid-answer


SOAK_RATES = Rates()


@dataclass
class Tally:
    """What the clients saw."""

    events: int = 0
    turns: Counter[str] = field(default_factory=Counter)  # transport/outcome
    checked_bytes: int = 0
    lost_or_reordered_bytes: int = 0
    client_errors: Counter[str] = field(default_factory=Counter)

    def completed(self, transport: str, outcome: str, audio: bytes, seconds: float | None) -> None:
        """Count a turn; a whole answer's audio must be exactly the pattern."""
        self.turns[f"{transport}/{outcome}"] += 1
        if outcome == "stop" and seconds is not None:
            want = pattern_pcm(int(seconds * BYTES_PER_SECOND))
            self.checked_bytes += len(want)
            if audio != want:
                differing = sum(a != b for a, b in zip(audio, want, strict=False))
                self.lost_or_reordered_bytes += differing + abs(len(want) - len(audio))


def pick_model(
    rng: random.Random, client_fault: str = "", fault_rate: float = Rates.fault
) -> tuple[str, float | None]:
    """A model for the next turn and, for a whole answer, its audio seconds.

    A turn its client will cancel gets an answer longer than every buffer on the way, so the upstream is
    still sending when the client cancels and the time until the gateway closes it can be measured.
    """
    if client_fault == "cancel":
        return CANCELLED_MODEL, None
    if rng.random() < fault_rate:
        return rng.choice(UPSTREAM_FAULTS), None
    seconds = rng.choice((1, 2, 3, 4))
    return f"long/{seconds}", float(seconds)


async def sse_blocks(response: httpx.Response) -> AsyncIterator[list[bytes]]:
    """The complete SSE blocks of each network read, in order."""
    buffer = b""
    async for piece in response.aiter_raw():
        buffer += piece
        *blocks, buffer = buffer.split(b"\n\n")
        yield blocks


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Soak:
    """One run: the gateway process, the fault upstream, the clients."""

    def __init__(
        self,
        upstream: FaultUpstream,
        grpc_port: int,
        http_port: int,
        minutes: float,
        events: int,
        rates: Rates = SOAK_RATES,
    ) -> None:
        self.upstream = upstream
        self.rates = rates
        self.grpc_target = f"127.0.0.1:{grpc_port}"
        self.http_base = f"http://127.0.0.1:{http_port}"
        self.started = time.monotonic()
        self.minutes = minutes
        self.events_target = events
        self.tally = Tally()
        self._texts = itertools.count()
        self.cancelled_at: dict[str, tuple[str, float]] = {}  # input text -> (transport, when cancelled)

    def text(self) -> str:
        """A user input no other turn has: the upstream keeps when it was hung up on by this text."""
        return f"hi {next(self._texts)}"

    def cancel(self, transport: str, text: str) -> None:
        """The client gives up on the turn whose input was `text` (now), counted as cancelled."""
        self.cancelled_at[text] = (transport, time.monotonic())
        self.tally.completed(transport, "cancelled", b"", None)

    def running(self) -> bool:
        """Until both `minutes` and the event target are reached; never past three times `minutes`."""
        elapsed = (time.monotonic() - self.started) / 60
        if elapsed >= 3 * self.minutes:
            return False
        return elapsed < self.minutes or self.tally.events < self.events_target

    async def worker(self, transport: str, seed: int) -> None:
        rng = random.Random(seed)
        run = getattr(self, f"_{transport}")
        async with grpc.aio.insecure_channel(self.grpc_target) as channel:
            stub = pb_grpc.AudioChatServiceStub(channel)
            async with httpx.AsyncClient(base_url=self.http_base, timeout=30) as http:
                while self.running():
                    try:
                        await run(rng, stub, http)
                    except Exception as exc:  # a client-visible failure the run counts, never a crash
                        self.tally.client_errors[f"{transport}/{type(exc).__name__}"] += 1

    def _client_fault(self, rng: random.Random) -> str:
        roll = rng.random()
        cancel, pause = self.rates.cancel, self.rates.pause
        return "cancel" if roll < cancel else "pause" if roll < cancel + pause else ""

    async def _stream_turn(self, rng: random.Random, stub: Any, http: httpx.AsyncClient) -> None:
        fault = self._client_fault(rng)
        model, seconds = pick_model(rng, fault, self.rates.fault)
        text = self.text()
        request = pb.StreamTurnRequest(config=pb.TurnConfig(model=model), input=pb.UserMessage(text=text))
        call = stub.StreamTurn(request)
        audio, outcome = bytearray(), "call_error"
        try:
            async for event in call:
                self.tally.events += 1
                kind = event.WhichOneof("event")
                if kind == "audio":
                    audio += event.audio.data
                    if fault == "cancel":
                        self.cancel("stream_turn", text)
                        call.cancel()
                        return
                    if fault == "pause":
                        fault = ""
                        await asyncio.sleep(0.5)
                elif kind == "completed":
                    outcome = (
                        pb.FinishReason.Name(event.completed.reason).removeprefix("FINISH_REASON_").lower()
                    )
        except grpc.aio.AioRpcError as exc:
            outcome = f"status_{exc.code().name.lower()}"
        self.tally.completed("stream_turn", outcome, bytes(audio), seconds)

    async def _converse(self, rng: random.Random, stub: Any, http: httpx.AsyncClient) -> None:
        first_fault = self._client_fault(rng)
        model, seconds = pick_model(rng, first_fault, self.rates.fault)
        call = stub.Converse()
        await call.write(pb.ConverseRequest(config=pb.ConverseConfig(turn=pb.TurnConfig(model=model))))
        await call.read()
        try:
            for turn in range(3):
                fault = first_fault if turn == 0 else self._client_fault(rng)
                text = self.text()
                await call.write(pb.ConverseRequest(text=pb.TextInput(text=text)))
                audio, outcome = bytearray(), ""
                while not outcome:
                    response = await call.read()
                    if response is grpc.aio.EOF:
                        outcome = "eof"
                        break
                    self.tally.events += 1
                    event = response.event
                    if event.HasField("audio"):
                        audio += event.audio.data
                        if fault == "cancel":
                            self.cancel("converse", text)
                            call.cancel()
                            return
                        if fault == "pause":
                            fault = ""
                            await asyncio.sleep(0.5)
                    elif event.HasField("completed"):
                        outcome = (
                            pb.FinishReason.Name(event.completed.reason)
                            .removeprefix("FINISH_REASON_")
                            .lower()
                        )
                self.tally.completed("converse", outcome, bytes(audio), seconds)
            await call.done_writing()
            while await call.read() is not grpc.aio.EOF:
                pass
        except grpc.aio.AioRpcError as exc:
            self.tally.completed("converse", f"status_{exc.code().name.lower()}", b"", None)

    async def _sse(self, rng: random.Random, stub: Any, http: httpx.AsyncClient) -> None:
        fault = self._client_fault(rng)
        model, seconds = pick_model(rng, fault, self.rates.fault)
        audio, outcome = bytearray(), "http_error"
        text = self.text()
        async with http.stream("POST", "/v1/turns", json={"model": model, "text": text}) as response:
            if response.status_code != 200:
                self.tally.completed("sse", f"http_{response.status_code}", b"", None)
                return
            async for blocks in sse_blocks(response):
                for block in blocks:
                    if not block.startswith(b"event: "):
                        continue
                    self.tally.events += 1
                    name = block[7 : block.index(b"\n")]
                    data = json.loads(block[block.index(b"data: ") + 6 :])
                    if name == b"audio.delta":
                        audio += base64.b64decode(data["data"])
                    elif name == b"turn.completed":
                        outcome = data["reason"]
                    elif name == b"error":
                        outcome = "stream_error"
                if fault == "cancel" and audio:
                    self.cancel("sse", text)
                    return
                if fault == "pause" and audio:
                    fault = ""
                    await asyncio.sleep(0.5)
        self.tally.completed("sse", outcome, bytes(audio), seconds)

    async def _websocket(self, rng: random.Random, stub: Any, http: httpx.AsyncClient) -> None:
        first_fault = self._client_fault(rng)
        model, seconds = pick_model(rng, first_fault, self.rates.fault)
        url = self.http_base.replace("http", "ws", 1) + "/v1/converse"
        async with connect(url, compression=None, max_size=None) as ws:
            await ws.send(json.dumps({"type": "config", "model": model}))
            await ws.recv()
            for turn in range(3):
                fault = first_fault if turn == 0 else self._client_fault(rng)
                text = self.text()
                await ws.send(json.dumps({"type": "text", "text": text}))
                audio, outcome = bytearray(), ""
                while not outcome:
                    frame = await ws.recv()
                    self.tally.events += 1
                    if isinstance(frame, bytes):
                        audio += frame[16:]
                        if fault == "cancel":
                            self.cancel("websocket", text)
                            return  # closing the socket is the client's cancel
                        if fault == "pause":
                            fault = ""
                            await asyncio.sleep(0.5)
                        continue
                    message = json.loads(frame)
                    if message["type"] == "turn.completed":
                        outcome = message["reason"]
                    elif message["type"] == "error":
                        outcome = "error_frame"
                self.tally.completed("websocket", outcome, bytes(audio), seconds)

    async def _compat(self, rng: random.Random, stub: Any, http: httpx.AsyncClient) -> None:
        fault = self._client_fault(rng)
        model, seconds = pick_model(rng, fault, self.rates.fault)
        text = self.text()
        body = {
            "model": model,
            "stream": True,
            "modalities": ["text", "audio"],
            "audio": {"voice": "alloy", "format": "pcm16"},
            "messages": [{"role": "user", "content": text}],
        }
        audio, outcome = bytearray(), "no_finish"
        async with http.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                self.tally.completed("compat", f"http_{response.status_code}", b"", None)
                return
            async for blocks in sse_blocks(response):
                for block in blocks:
                    if not block.startswith(b"data: ") or block == b"data: [DONE]":
                        continue
                    self.tally.events += 1
                    chunk = json.loads(block[6:])
                    if "error" in chunk:
                        outcome = "error_chunk"
                        continue
                    for choice in chunk.get("choices") or ():
                        data = ((choice.get("delta") or {}).get("audio") or {}).get("data")
                        if data:
                            audio += base64.b64decode(data)
                        if choice.get("finish_reason"):
                            outcome = choice["finish_reason"]
                if fault == "cancel" and audio:
                    self.cancel("compat", text)
                    return
                if fault == "pause" and audio:
                    fault = ""
                    await asyncio.sleep(0.5)
        self.tally.completed("compat", outcome, bytes(audio), seconds)


def start_gateway(
    upstream_url: str, grpc_port: int, http_port: int, metrics_port: int, extra_env: dict[str, str]
) -> subprocess.Popen[bytes]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "AUDIOCHAT_"))},
        "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "gen")]),
        "OPENAI_API_KEY": "sk-soak",
        "OPENAI_BASE_URL": upstream_url,
        "AUDIOCHAT_UPSTREAM": "openai",
        "AUDIOCHAT_BIND": "127.0.0.1",
        "AUDIOCHAT_GRPC_PORT": str(grpc_port),
        "AUDIOCHAT_HTTP_PORT": str(http_port),
        "AUDIOCHAT_METRICS_PORT": str(metrics_port),
        "AUDIOCHAT_UPSTREAM_TIMEOUT_SECONDS": "2",
        "AUDIOCHAT_UPSTREAM_IDLE_TIMEOUT_SECONDS": "1",
        "AUDIOCHAT_UPSTREAM_MAX_WAIT_SECONDS": "2",
        "AUDIOCHAT_SSE_ORPHAN_SECONDS": "1",
        "AUDIOCHAT_LOG_LEVEL": "warning",
        **extra_env,
    }
    command = [sys.executable, "-m", "service.cli", "serve"]
    return subprocess.Popen(command, env=env, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)


def cancel_to_close(
    cancelled_at: dict[str, tuple[str, float]], hung_up_at: dict[str, float]
) -> dict[str, dict[str, Any]]:
    """Per transport: milliseconds from a client's cancel to the upstream seeing its request closed.

    Only cancels of whole-answer turns whose upstream was still sending are timed (`timed`); the others
    (`untimed`) had a fault model, or an answer the upstream had already written whole. Both ends are
    read on the soak process's clock, which also runs the load, so the figures are upper bounds.
    """
    timed: dict[str, list[float]] = {}
    untimed: Counter[str] = Counter()
    for text, (transport, at) in cancelled_at.items():
        closed = hung_up_at.get(text)
        if closed is None or closed < at:
            untimed[transport] += 1
        else:
            timed.setdefault(transport, []).append((closed - at) * 1000)
    figures: dict[str, dict[str, Any]] = {}
    for transport in TRANSPORTS:
        values = sorted(timed.get(transport, []))
        entry: dict[str, Any] = {"timed": len(values), "untimed": untimed[transport]}
        if len(values) >= 2:
            cuts = statistics.quantiles(values, n=100, method="inclusive")
            entry.update(
                p50_ms=round(cuts[49], 1),
                p90_ms=round(cuts[89], 1),
                p99_ms=round(cuts[98], 1),
                max_ms=round(values[-1], 1),
            )
        figures[transport] = entry
    return figures


@dataclass
class Options:
    """What a run is asked to do (the command line)."""

    minutes: float = 10.0
    events: int = 1_000_000
    workers: int = 4
    transports: tuple[str, ...] = TRANSPORTS  # which clients run (a subset narrows down a leak)
    seed: int = 1
    gateway_env: dict[str, str] = field(default_factory=dict)  # on top of start_gateway's
    sample_seconds: float = 10.0
    report_seconds: float = 60.0
    memory_reports: Path | None = None  # a directory: the gateway writes memory reports, kept here


def add_scripts(upstream: FaultUpstream) -> None:
    """The raw answers the faults name (`script/malformed`: audio, then a piece that is not base64)."""
    upstream.scripts["malformed"] = b"".join(fixture_events("audio_no_finish_reason")[:14]) + script(
        {"choices": [{"index": 0, "delta": {"audio": {"data": "!!!!"}}}]}
    )


async def run(options: Options) -> dict[str, Any]:
    async with FaultUpstream() as upstream:
        add_scripts(upstream)
        grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
        extra_env = dict(options.gateway_env)
        report_path = None
        if options.memory_reports is not None:
            options.memory_reports.mkdir(parents=True, exist_ok=True)
            for old in options.memory_reports.glob("*.json"):
                old.unlink()
            report_path = options.memory_reports / "latest.json"
            extra_env["AUDIOCHAT_MEMORY_REPORT"] = str(report_path)
        gateway = start_gateway(upstream.base_url, grpc_port, http_port, metrics_port, extra_env)
        try:
            # A gateway under tracemalloc loads its models several times slower than the usual seconds.
            await wait_ready(f"http://127.0.0.1:{http_port}", timeout_seconds=180)
            rss_start = rss_mib(gateway.pid)
            cpu_start = cpu_seconds(gateway.pid), time.process_time()
            watch = MemoryWatch(
                gateway.pid,
                every=options.sample_seconds,
                metrics_url=f"http://127.0.0.1:{http_port}/metrics",
                core_metrics_url=f"http://127.0.0.1:{metrics_port}/metrics",
                report_path=report_path,
                report_every=options.report_seconds,
                keep_reports=options.memory_reports,
            )
            sampler = asyncio.create_task(watch.run())
            soak = Soak(upstream, grpc_port, http_port, options.minutes, options.events)
            started = soak.started
            await asyncio.gather(
                *(
                    soak.worker(t, options.seed * 1000 + i * 10 + n)
                    for i, t in enumerate(TRANSPORTS)
                    if t in options.transports
                    for n in range(options.workers)
                )
            )
            elapsed = time.monotonic() - started
            sampler.cancel()
            gateway_cpu = cpu_seconds(gateway.pid) - cpu_start[0]
            load_cpu = time.process_time() - cpu_start[1]
            # Every client is done: whatever the gateway still holds open upstream is a leak.
            await asyncio.sleep(2.0)
            left_open = upstream.open_streams
            rss_end = rss_mib(gateway.pid)
        finally:
            gateway.send_signal(signal.SIGTERM)
            gateway.wait(timeout=60)
    tally = soak.tally
    return {
        "minutes": round(elapsed / 60, 2),
        "workers_per_transport": options.workers,
        "transports": list(options.transports),
        "gateway_env": options.gateway_env,
        "events_relayed": tally.events,
        "events_per_second": round(tally.events / elapsed),
        "turns": dict(sorted(tally.turns.items())),
        "bytes_checked_in_completed_turns": tally.checked_bytes,
        "bytes_lost_or_reordered": tally.lost_or_reordered_bytes,
        "upstream_requests": len(upstream.requests),
        "upstream_connections_left_open": left_open,
        "client_errors": dict(tally.client_errors),
        # SSE waits AUDIOCHAT_SSE_ORPHAN_SECONDS (1 s here) for a resume before it stops the upstream.
        "cancel_to_upstream_close_ms": cancel_to_close(soak.cancelled_at, upstream.hung_up_at),
        "gateway_rss_mib_start": round(rss_start, 1),
        "gateway_rss_mib_end": round(rss_end, 1),
        "memory": watch.figures(elapsed),
        "gateway_cpu_share": round(gateway_cpu / elapsed, 2),
        "soak_process_cpu_share": round(load_cpu / elapsed, 2),
        "gateway_exit_code": gateway.returncode,
    }


def main() -> None:
    # The fault upstream's scripted resets are errors to uvicorn; here they are the point.
    logging.getLogger("uvicorn.error").setLevel(logging.CRITICAL)
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="at least this long")
    parser.add_argument(
        "--events", type=int, default=1_000_000, help="and at least this many events (up to 3x --minutes)"
    )
    parser.add_argument("--workers", type=int, default=4, help="concurrent clients per transport")
    parser.add_argument(
        "--transports",
        default=",".join(TRANSPORTS),
        help=f"comma-separated clients to run (default all: {','.join(TRANSPORTS)})",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--resume-seconds", type=float, help="the gateway's AUDIOCHAT_RESUME_SECONDS (default 60)"
    )
    parser.add_argument(
        "--resume-bytes", type=int, help="the gateway's AUDIOCHAT_RESUME_BUFFER_BYTES (default 256 MiB)"
    )
    parser.add_argument(
        "--gateway-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="more environment for the gateway (MALLOC_ARENA_MAX=2, PYTHONTRACEMALLOC=8...); repeatable",
    )
    parser.add_argument(
        "--sample-seconds", type=float, default=10.0, help="how often the gateway's memory is read"
    )
    parser.add_argument(
        "--memory-reports",
        type=Path,
        metavar="DIR",
        default=REPO / "build" / "soak",
        help="where the gateway's memory reports (SIGUSR1) are kept (default build/soak; '' for none)",
    )
    parser.add_argument(
        "--report-seconds", type=float, default=60.0, help="how often the gateway writes a memory report"
    )
    args = parser.parse_args()
    transports = tuple(name for name in args.transports.split(",") if name)
    if not transports or set(transports) - set(TRANSPORTS):
        parser.error(f"--transports takes names from {', '.join(TRANSPORTS)}")
    gateway_env = dict(item.split("=", 1) for item in args.gateway_env)
    if args.resume_seconds is not None:
        gateway_env["AUDIOCHAT_RESUME_SECONDS"] = str(args.resume_seconds)
    if args.resume_bytes is not None:
        gateway_env["AUDIOCHAT_RESUME_BUFFER_BYTES"] = str(args.resume_bytes)
    options = Options(
        minutes=args.minutes,
        events=args.events,
        workers=args.workers,
        transports=transports,
        seed=args.seed,
        gateway_env=gateway_env,
        sample_seconds=args.sample_seconds,
        report_seconds=args.report_seconds,
        memory_reports=args.memory_reports if str(args.memory_reports) not in ("", ".") else None,
    )
    report = asyncio.run(run(options))
    print(json.dumps(report, indent=2))
    bad = report["bytes_lost_or_reordered"] or report["upstream_connections_left_open"]
    sys.exit(1 if bad or report["gateway_exit_code"] != 0 else 0)


if __name__ == "__main__":
    main()
