"""The `say` and `ask` commands: one turn over gRPC, transcript to stdout, audio to a WAV as it arrives.

With `--tool NAME=RESULT` the turn offers the tool NAME; when the model calls it, the command answers
with RESULT and the model's continuation streams into the same output (up to MAX_TOOL_ROUNDS rounds).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import grpc

from audiochat.v1 import audiochat_pb2 as pb
from audiochat.v1 import audiochat_pb2_grpc as pb_grpc
from service.api_keys import bearer_metadata
from service.audio import MODEL_SAMPLE_RATE
from service.audio.sniff import SNIFF_BYTES, sniff
from service.wav_writer import StreamingWavWriter

CONNECT_TIMEOUT_SECONDS = 3.0
# A model that keeps calling tools is stopped after this many rounds of results.
MAX_TOOL_ROUNDS = 4

API_KEY_VARIABLE = "AUDIOCHAT_API_KEY"  # the key `say` and `ask` send when the service has keys


class ClientError(Exception):
    """A failure worth one line on stderr, not a traceback."""


def audio_input_from_file(path: Path) -> pb.AudioInput:
    """Read a recording; its encoding comes from its first bytes, not its name."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ClientError(f"cannot read {path}: {exc.strerror}") from exc
    if sniff(data[:SNIFF_BYTES]) is None:
        raise ClientError(f"{path} is not a recording audiochat reads (wav, mp3, m4a, webm, ogg, flac)")
    # The service recognises the container from the bytes too; the encoding is left for it to find.
    return pb.AudioInput(data=data)


def tool_results_of(flags: Sequence[str]) -> dict[str, str]:
    """`NAME=RESULT` flags as {name: result}; ClientError for a flag without a name."""
    results: dict[str, str] = {}
    for flag in flags:
        name, separator, result = flag.partition("=")
        if not separator or not name:
            raise ClientError(
                f"--tool {flag!r}: write NAME=RESULT, for example get_weather='{{\"temp_c\": 21}}'"
            )
        results[name] = result
    return results


def offer_tools(config: pb.TurnConfig, results: Mapping[str, str]) -> None:
    """Offer each tool of `--tool` as a function without parameters."""
    for name in results:
        config.tools.append(pb.Tool(function=pb.FunctionTool(name=name, parameters_json='{"type":"object"}')))


def continuation(
    request: pb.StreamTurnRequest, completed: pb.TurnCompleted, results: Mapping[str, str]
) -> pb.StreamTurnRequest:
    """The next turn after `completed` called tools: the exchange in the history, each call answered."""
    history = list(request.history)
    if request.input.text or request.input.HasField("audio"):
        history.append(pb.HistoryItem(user=request.input))
    calling = pb.AssistantMessage(
        text=completed.transcript,
        audio_id=completed.audio_id,
        audio_expires_at=completed.audio_expires_at,
        tool_calls=completed.tool_calls,
    )
    history.append(pb.HistoryItem(assistant=calling))
    for call in completed.tool_calls:
        if call.name not in results:
            raise ClientError(f"the model called {call.name!r}, which no --tool answers")
        print(f"[{call.name}({call.arguments}) -> {results[call.name]}]", file=sys.stderr)
        history.append(
            pb.HistoryItem(tool_result=pb.ToolResult(tool_call_id=call.id, content=results[call.name]))
        )
    return pb.StreamTurnRequest(config=request.config, history=history)


class _LazyWav:
    """The -o file, opened at the first audio: a turn without audio leaves no empty WAV behind."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._writer: StreamingWavWriter | None = None

    @property
    def opened(self) -> bool:
        """Whether any audio was written."""
        return self._writer is not None

    def write(self, pcm: bytes) -> None:
        if self._writer is None:
            self._writer = StreamingWavWriter(self._path)
        self._writer.write(pcm)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


async def run_turn(
    target: str,
    request: pb.StreamTurnRequest,
    output: Path | None,
    tool_results: Mapping[str, str] | None = None,
) -> pb.TurnCompleted:
    """Send one turn, print the transcript as it streams, write the audio, report time to first audio;
    answer the tools it calls from `tool_results` and stream the continuations the same way."""
    async with grpc.aio.insecure_channel(target) as channel:
        try:
            await _wait_ready(channel, target)
            stub = pb_grpc.AudioChatServiceStub(channel)
            writer = _LazyWav(output) if output is not None else None
            try:
                completed, first_audio_ms = await _stream(stub, request, writer)
                for _ in range(MAX_TOOL_ROUNDS):
                    if completed.reason != pb.FINISH_REASON_TOOL_CALLS or not tool_results:
                        break
                    request = continuation(request, completed, tool_results)
                    completed, _ = await _stream(stub, request, writer)
            finally:
                if writer is not None:
                    writer.close()
        except grpc.aio.AioRpcError as exc:
            raise ClientError(f"{exc.code().name}: {exc.details()}") from exc
    _report(completed, first_audio_ms, output if writer is not None and writer.opened else None)
    return completed


async def _wait_ready(channel: grpc.aio.Channel, target: str) -> None:
    # A plain TCP connect first: a closed port is refused at once, where gRPC would retry with backoff
    # until the timeout, and an open one that is not gRPC can then be told apart from a slow one.
    # Targets gRPC resolves itself (dns:///..., unix:...) skip this.
    host, _, port = target.rpartition(":")
    probed = port.isdigit() and "/" not in target and not target.startswith("unix:")
    if probed:
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS):
                _, writer = await asyncio.open_connection(host.strip("[]") or "localhost", int(port))
            writer.close()
        except (OSError, TimeoutError):
            raise ClientError(f"nothing answers at {target} (is `audiochat serve` running?)") from None
    try:
        await asyncio.wait_for(channel.channel_ready(), CONNECT_TIMEOUT_SECONDS)
    except TimeoutError:
        if not probed:
            raise ClientError(f"nothing answers at {target} (is `audiochat serve` running?)") from None
        raise ClientError(
            f"{target} accepts connections but does not speak gRPC (the HTTP edge? "
            "`say` and `ask` need the gRPC port, 50051 by default)"
        ) from None


async def _stream(
    stub: pb_grpc.AudioChatServiceAsyncStub, request: pb.StreamTurnRequest, writer: _LazyWav | None
) -> tuple[pb.TurnCompleted, float | None]:
    """One turn: its TurnCompleted and its time to first audio in ms (None without audio)."""
    sent_at = time.perf_counter()
    first_audio_ms: float | None = None
    completed = pb.TurnCompleted()
    async for event in stub.StreamTurn(request, metadata=bearer_metadata(os.environ.get(API_KEY_VARIABLE))):
        kind = event.WhichOneof("event")
        if kind == "text":
            sys.stdout.write(event.text.text)
            sys.stdout.flush()
        elif kind == "audio":
            if first_audio_ms is None:
                first_audio_ms = (time.perf_counter() - sent_at) * 1000
            if writer is not None:
                writer.write(event.audio.data)
        elif kind == "completed":
            completed = event.completed
    sys.stdout.write("\n")
    return completed, first_audio_ms


def _report(completed: pb.TurnCompleted, first_audio_ms: float | None, written: Path | None) -> None:
    seconds = completed.audio_samples / MODEL_SAMPLE_RATE
    if first_audio_ms is not None:
        print(f"time to first audio: {first_audio_ms:.0f} ms", file=sys.stderr)
        if written is not None:
            print(f"wrote {seconds:.2f} s of audio to {written}", file=sys.stderr)
        else:
            print(f"{seconds:.2f} s of audio not kept (-o FILE.wav writes it)", file=sys.stderr)
    if completed.reason == pb.FINISH_REASON_ERROR:
        error = completed.error
        raise ClientError(f"the turn failed: {pb.ErrorCode.Name(error.code)}: {error.message}")
