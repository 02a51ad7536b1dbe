"""A paced OpenAI-compatible upstream: `POST /v1/chat/completions` streamed like a real audio model.

It shares one core with the load generator, so it is a bare asyncio.Protocol HTTP/1.1 server (keep-alive,
chunked bodies) whose events are timer callbacks writing prebuilt bytes: no task, no framework, no JSON
encoding per audio piece. The chunk shapes are the real ones (`service.offline.wire`); every chunk also
carries `x_sent_ns`, and every audio piece its send time in its first bytes (see `pieces`).

Run alone: `python -m benchmarks.simulator --port 8000` prints `{"port": ...}` once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import signal
import sys
import time
from collections.abc import Callable
from typing import Any, cast

from benchmarks import loop
from benchmarks.pieces import HEADER, HEADER_BYTES, Pacing, filler
from service.offline import wire

SENT_FIELD = "x_sent_ns"
_PLACEHOLDER_NS = 10**18  # as wide as any time_ns() until 2286, so the template's layout holds
_HEAD_LIMIT = 64 * 1024
_MAX_BODY = 64 * 1024 * 1024


def _stamped(body: wire.Json) -> bytes:
    body[SENT_FIELD] = time.time_ns()
    return wire.sse_event(body)


class AudioTemplate:
    """One stream's audio chunk as bytes with two holes: the piece header's base64 and the send time."""

    __slots__ = ("_after_header", "_after_time", "_before_header")

    def __init__(self, ident: wire.StreamIdentity, tail: bytes) -> None:
        body = wire.audio_data_chunk(ident, bytes(HEADER_BYTES) + tail)
        body[SENT_FIELD] = _PLACEHOLDER_NS
        raw = wire.sse_event(body)
        zero_header = base64.b64encode(bytes(HEADER_BYTES))
        start = raw.index(b'"data":"' + zero_header) + len(b'"data":"')
        placeholder = f'"{SENT_FIELD}":{_PLACEHOLDER_NS}'.encode()
        at = raw.index(placeholder) + len(placeholder) - len(str(_PLACEHOLDER_NS))
        self._before_header = raw[:start]
        self._after_header = raw[start + len(zero_header) : at]
        self._after_time = raw[at + len(str(_PLACEHOLDER_NS)) :]

    def event(self, index: int) -> bytes:
        """The SSE event of piece `index`, stamped now."""
        now = time.time_ns()
        header = base64.b64encode(HEADER.pack(now, index))
        return b"".join((self._before_header, header, self._after_header, b"%d" % now, self._after_time))


class Stream:
    """One streamed answer on one connection, driven by the event loop's timers."""

    def __init__(
        self,
        sim: Simulator,
        request: dict[str, Any],
        write: Callable[[bytes], None],
        on_end: Callable[[Stream], None],
    ) -> None:
        self._sim = sim
        self._write = write
        self._on_end = on_end
        pacing = sim.pacing
        self._ident = wire.StreamIdentity.new(str(request.get("model") or "gpt-4o-audio-preview"))
        self._audio_id = wire.new_audio_id()
        self._usage = bool((request.get("stream_options") or {}).get("include_usage"))
        self._template = AudioTemplate(self._ident, sim.filler)
        # (offset from the first chunk, kind, index): transcripts spread over the speech, ahead of its audio.
        plan: list[tuple[float, int, int]] = [
            (index / pacing.audio_pieces_per_second, 1, index) for index in range(pacing.audio_pieces)
        ]
        words = pacing.transcript_pieces
        plan += [(index * pacing.speech_seconds / words, 0, index) for index in range(words)]
        plan.sort()
        self._plan = plan
        self._next = 0
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._first_at = loop.time() + pacing.first_chunk_seconds
        self._handle: asyncio.TimerHandle | None = loop.call_at(self._first_at, self._start)

    def _start(self) -> None:
        self._write(_stamped(wire.role_chunk(self._ident)))
        self._step()

    def _step(self) -> None:
        plan = self._plan
        if self._next >= len(plan):
            self._finish()
            return
        _, kind, index = plan[self._next]
        if kind == 1:
            if index == 0:
                # The first data chunk repeats role and audio id, like the real stream.
                pcm = HEADER.pack(time.time_ns(), 0) + self._sim.filler
                self._write(_stamped(wire.audio_data_chunk(self._ident, pcm, self._audio_id)))
            else:
                self._write(self._template.event(index))
        else:
            word = "word" if index == 0 else " word"
            audio_id = self._audio_id if index == 0 else None
            self._write(_stamped(wire.transcript_chunk(self._ident, word, audio_id)))
        self._next += 1
        if self._next < len(plan):
            self._handle = self._loop.call_at(self._first_at + plan[self._next][0], self._step)
        else:
            # The tail follows the last piece after one piece's time, like a model finishing a sentence.
            pause = 1 / self._sim.pacing.audio_pieces_per_second
            self._handle = self._loop.call_at(self._loop.time() + pause, self._finish)

    def _finish(self) -> None:
        self._handle = None
        pacing = self._sim.pacing
        events = [
            _stamped(wire.expires_chunk(self._ident, int(time.time()) + 3600)),
            _stamped(wire.finish_chunk(self._ident, "stop")),
        ]
        if self._usage:
            audio_tokens = round(pacing.audio_seconds * 10)
            usage = wire.usage_dict(17, 0, pacing.transcript_pieces, audio_tokens)
            events.append(_stamped(wire.usage_chunk(self._ident, usage)))
        events.append(wire.SSE_DONE)
        self._write(b"".join(events))
        self._sim.streams_completed += 1
        self._on_end(self)

    def cancel(self) -> None:
        """The client went away: stop sending."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
            self._sim.streams_cancelled += 1


class _Connection(asyncio.Protocol):
    """HTTP/1.1 with keep-alive: one request at a time, answered with a chunked body."""

    def __init__(self, sim: Simulator) -> None:
        self._sim = sim
        self._buffer = b""
        self._transport: asyncio.Transport | None = None
        self._stream: Stream | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        self._sim.connections.add(self)

    def close(self) -> None:
        """Drop the connection (the simulator is stopping)."""
        if self._transport is not None:
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._sim.connections.discard(self)
        if self._stream is not None:
            self._stream.cancel()
            self._stream = None
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while self._stream is None and self._transport is not None:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > _HEAD_LIMIT:
                    self._respond(431, {"error": {"message": "headers too large"}}, close=True)
                return
            head = self._buffer[:end].decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:])}
            length = int(headers.get("content-length") or 0)
            if length > _MAX_BODY:
                self._respond(413, {"error": {"message": "body too large"}}, close=True)
                return
            if len(self._buffer) < end + 4 + length:
                return
            body = self._buffer[end + 4 : end + 4 + length]
            self._buffer = self._buffer[end + 4 + length :]
            self._handle(head[0].split(" "), body)

    def _handle(self, request_line: list[str], body: bytes) -> None:
        if len(request_line) < 2 or request_line[0] != "POST" or request_line[1] != "/v1/chat/completions":
            self._respond(404, {"error": {"message": "only POST /v1/chat/completions is simulated"}})
            return
        try:
            request = json.loads(body)
        except ValueError:
            self._respond(400, {"error": {"message": "the body is not JSON"}})
            return
        if not isinstance(request, dict) or not request.get("stream"):
            self._respond(400, {"error": {"message": "the simulator only streams"}})
            return
        assert self._transport is not None
        self._transport.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n"
            b"x-request-id: " + wire.new_request_id().encode() + b"\r\n\r\n"
        )
        self._sim.streams_started += 1
        self._stream = Stream(self._sim, request, self._write_chunk, self._stream_ended)

    def _write_chunk(self, data: bytes) -> None:
        if self._transport is not None:
            self._transport.write(b"%x\r\n%b\r\n" % (len(data), data))

    def _stream_ended(self, stream: Stream) -> None:
        # The answer is complete: end the chunked body; the connection stays open for the next request.
        if self._stream is stream:
            self._stream = None
            if self._transport is not None:
                self._transport.write(b"0\r\n\r\n")
                if self._buffer:
                    self.data_received(b"")

    def _respond(self, status: int, body: dict[str, Any], close: bool = False) -> None:
        if self._transport is None:
            return
        payload = json.dumps(body).encode()
        self._transport.write(
            b"HTTP/1.1 %d ERR\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%b"
            % (status, len(payload), payload)
        )
        if close:
            self._transport.close()


class Simulator:
    """The server; `async with Simulator(pacing) as sim:` then point clients at `sim.base_url`."""

    def __init__(self, pacing: Pacing, host: str = "127.0.0.1", port: int = 0) -> None:
        self.pacing = pacing.validated()
        self.filler = filler(pacing)
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None
        self.connections: set[_Connection] = set()
        self.streams_started = 0
        self.streams_completed = 0
        self.streams_cancelled = 0
        self.port = 0

    @property
    def base_url(self) -> str:
        """What OPENAI_BASE_URL should be."""
        return f"http://{self._host}:{self.port}/v1"

    def _protocol(self) -> _Connection:
        return _Connection(self)

    async def __aenter__(self) -> Simulator:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, self._host, self._port, backlog=4096)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._server is not None:
            self._server.close()
            for connection in list(self.connections):
                connection.close()
            await self._server.wait_closed()


async def _serve(pacing: Pacing, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with Simulator(pacing, port=port) as sim:
        print(json.dumps({"port": sim.port}), flush=True)
        await stop.wait()
        print(
            json.dumps({"streams_started": sim.streams_started, "completed": sim.streams_completed}),
            flush=True,
        )


def pacing_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the pacing options (shared with the benchmark's command line)."""
    default = Pacing()
    parser.add_argument("--first-chunk-ms", type=float, default=default.first_chunk_seconds * 1000)
    parser.add_argument("--audio-pieces-per-second", type=float, default=default.audio_pieces_per_second)
    parser.add_argument("--bytes-per-piece", type=int, default=default.bytes_per_piece, help="0: real time")
    parser.add_argument(
        "--transcript-pieces-per-second", type=float, default=default.transcript_pieces_per_second
    )
    parser.add_argument("--speech-seconds", type=float, default=default.speech_seconds)


def pacing_from(args: argparse.Namespace) -> Pacing:
    """The Pacing the parsed options describe."""
    return Pacing(
        first_chunk_seconds=args.first_chunk_ms / 1000,
        audio_pieces_per_second=args.audio_pieces_per_second,
        bytes_per_piece=args.bytes_per_piece,
        transcript_pieces_per_second=args.transcript_pieces_per_second,
        speech_seconds=args.speech_seconds,
    ).validated()


def pacing_argv(pacing: Pacing) -> list[str]:
    """The command-line options that recreate `pacing` in a simulator process."""
    return [
        f"--first-chunk-ms={pacing.first_chunk_seconds * 1000}",
        f"--audio-pieces-per-second={pacing.audio_pieces_per_second}",
        f"--bytes-per-piece={pacing.bytes_per_piece}",
        f"--transcript-pieces-per-second={pacing.transcript_pieces_per_second}",
        f"--speech-seconds={pacing.speech_seconds}",
    ]


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.simulator", description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    pacing_arguments(parser)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        loop.run(_serve(pacing_from(args), args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
