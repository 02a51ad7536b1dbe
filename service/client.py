"""The `say` and `ask` commands: one turn over gRPC, transcript to stdout, audio to a WAV as it arrives."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import grpc

from audiochat.v1 import audiochat_pb2 as pb
from audiochat.v1 import audiochat_pb2_grpc as pb_grpc
from service.api_keys import bearer_metadata
from service.audio import MODEL_SAMPLE_RATE
from service.audio.sniff import SNIFF_BYTES, sniff
from service.wav_writer import StreamingWavWriter

CONNECT_TIMEOUT_SECONDS = 3.0

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


async def run_turn(target: str, request: pb.StreamTurnRequest, output: Path | None) -> pb.TurnCompleted:
    """Send one turn, print the transcript as it streams, write the audio, report time to first audio."""
    async with grpc.aio.insecure_channel(target) as channel:
        try:
            await _wait_ready(channel, target)
            stub = pb_grpc.AudioChatServiceStub(channel)
            return await _stream(stub, request, output)
        except grpc.aio.AioRpcError as exc:
            raise ClientError(f"{exc.code().name}: {exc.details()}") from exc


async def _wait_ready(channel: grpc.aio.Channel, target: str) -> None:
    try:
        await asyncio.wait_for(channel.channel_ready(), CONNECT_TIMEOUT_SECONDS)
    except TimeoutError:
        raise ClientError(f"nothing answers at {target} (is `audiochat serve` running?)") from None


async def _stream(
    stub: pb_grpc.AudioChatServiceAsyncStub, request: pb.StreamTurnRequest, output: Path | None
) -> pb.TurnCompleted:
    sent_at = time.perf_counter()
    first_audio_ms: float | None = None
    writer = StreamingWavWriter(output) if output is not None else None
    completed = pb.TurnCompleted()
    try:
        async for event in stub.StreamTurn(
            request, metadata=bearer_metadata(os.environ.get(API_KEY_VARIABLE))
        ):
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
    finally:
        if writer is not None:
            writer.close()
    sys.stdout.write("\n")
    _report(completed, first_audio_ms, output)
    return completed


def _report(completed: pb.TurnCompleted, first_audio_ms: float | None, output: Path | None) -> None:
    seconds = completed.audio_samples / MODEL_SAMPLE_RATE
    if first_audio_ms is not None:
        print(f"time to first audio: {first_audio_ms:.0f} ms", file=sys.stderr)
    if output is not None:
        print(f"wrote {seconds:.2f} s of audio to {output}", file=sys.stderr)
    if completed.reason == pb.FINISH_REASON_ERROR:
        error = completed.error
        raise ClientError(f"the turn failed: {pb.ErrorCode.Name(error.code)}: {error.message}")
