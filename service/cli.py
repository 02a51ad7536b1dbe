"""The `audiochat` command: `serve` runs the service, `edge` its HTTP edge alone; `say`, `ask` are clients."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Coroutine
from importlib import metadata
from pathlib import Path
from typing import Any

from audiochat.v1 import audiochat_pb2 as pb
from service import logs
from service.client import ClientError, audio_input_from_file, offer_tools, run_turn, tool_results_of
from service.listen import ListenError
from service.runner import serve
from service.settings import Settings, from_environment
from service.upstream_registry import KINDS

DEFAULT_TARGET = "localhost:50051"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="audiochat", description="Streaming gateway for spoken answers.")
    parser.add_argument("--version", action="version", version=f"audiochat {metadata.version('audiochat')}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser(
        "serve",
        help="run the gRPC service, its metrics and the HTTP edge (--role picks one part); settings also "
        "from AUDIOCHAT_* variables",
    )
    edge = commands.add_parser("edge", help="run only the HTTP/WebSocket edge against a remote core")
    edge.add_argument("--target", required=True, help="the core's gRPC address, host:port")
    edge.add_argument("--http-port", type=int, help="HTTP port (default 8080)")
    edge.add_argument("--bind", help="address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)")
    edge.add_argument("--log-level", help="debug, info, warning, error (default info)")
    run.add_argument("--role", choices=("all", "core", "edge"), help="default all: core and edge together")
    run.add_argument("--target", help="the core's gRPC address, for --role edge")
    run.add_argument("--http-port", type=int, help="HTTP port of the edge (default 8080)")
    run.add_argument(
        "--upstream",
        choices=tuple(KINDS),
        help="openai (Chat Completions), openai-realtime (the Realtime API) or offline; default: openai if "
        "OPENAI_API_KEY is set, else offline",
    )
    run.add_argument("--bind", help="address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)")
    run.add_argument("--grpc-port", type=int, help="gRPC port (default 50051)")
    run.add_argument(
        "--model", help="default model (default gpt-4o-audio-preview; gpt-realtime with openai-realtime)"
    )
    run.add_argument("--voice", help="default voice (default alloy)")
    run.add_argument("--drain-seconds", type=float, help="grace for running turns on SIGTERM (default 25)")
    run.add_argument(
        "--max-streams", type=int, help="concurrent streams before RESOURCE_EXHAUSTED (default 1000)"
    )
    run.add_argument("--log-level", help="debug, info, warning, error (default info)")

    target = os.environ.get("AUDIOCHAT_TARGET", DEFAULT_TARGET)
    inputs = {
        "say": ("message", "what you say to the model, as text (it answers; this is not text-to-speech)"),
        "ask": ("recording", "a WAV or MP3 recording of what you say to the model"),
    }
    for name, (metavar, what) in inputs.items():
        client = commands.add_parser(
            name, help=f"one turn against a running service, the answer spoken back: {what}"
        )
        client.add_argument("input", metavar=metavar, help=what)
        client.add_argument("-o", "--output", type=Path, help="write the spoken answer to this WAV file")
        client.add_argument("--target", default=target, help=f"service address (default {target})")
        client.add_argument("--voice", default="", help="voice (default: the service's)")
        client.add_argument("--model", default="", help="model (default: the service's)")
        client.add_argument("--instructions", default="", help="system instructions")
        client.add_argument(
            "--text-only",
            action="store_true",
            help="ask for a text answer without audio (audio models need audio in the question, so with "
            "`say` only together with --model naming a text model)",
        )
        client.add_argument(
            "--tool",
            action="append",
            default=[],
            metavar="NAME=RESULT",
            help="offer the tool NAME; when the model calls it, answer RESULT (often JSON); repeatable",
        )
    return parser


def _turn_request(args: argparse.Namespace) -> pb.StreamTurnRequest:
    if args.command == "say" and args.text_only and not args.model:
        # The audio models refuse a turn with audio neither in nor out; say so before the round trip.
        raise ClientError(
            "say --text-only sends no audio either way, which the audio models refuse: use "
            "`ask RECORDING --text-only`, or name a text model with --model"
        )
    modalities = [pb.MODALITY_TEXT] if args.text_only else [pb.MODALITY_TEXT, pb.MODALITY_AUDIO]
    config = pb.TurnConfig(
        model=args.model, voice=args.voice, instructions=args.instructions, modalities=modalities
    )
    offer_tools(config, tool_results_of(args.tool))
    if args.command == "say":
        return pb.StreamTurnRequest(config=config, input=pb.UserMessage(text=args.input))
    return pb.StreamTurnRequest(
        config=config, input=pb.UserMessage(audio=audio_input_from_file(Path(args.input)))
    )


def _settings(args: argparse.Namespace) -> Settings:
    """Settings from the environment, overridden by the flags given (their names are the settings')."""
    flags = {name: value for name, value in vars(args).items() if name not in ("command", "target")}
    flags["core_target"] = args.target
    if args.command == "edge":
        flags["role"] = "edge"
    return from_environment(**flags)


def run(main: Coroutine[Any, Any, object]) -> None:
    """Run on uvloop when it is installed: less CPU per relayed event than the default loop (make bench)."""
    if os.environ.get("AUDIOCHAT_EVENT_LOOP", "uvloop") == "uvloop":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(main)
            return
    asyncio.run(main)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.command in ("serve", "edge"):
            settings = _settings(args)
            logs.configure(settings.log_level)
            run(serve(settings))
        else:
            run(run_turn(args.target, _turn_request(args), args.output, tool_results_of(args.tool)))
    except ListenError as exc:
        print(f"audiochat: {exc}", file=sys.stderr)
        return 2
    except (ClientError, ValueError) as exc:
        print(f"audiochat: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
