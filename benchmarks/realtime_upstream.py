"""What the Realtime upstream costs beside Chat Completions for the same answer, measured in one run.

Two `audiochat serve` processes (role core) on the gateway cores: one on Chat Completions, one with
`AUDIOCHAT_UPSTREAM=openai-realtime`. Both answer the same recorded answer (the capture
`audio_no_finish_reason`: 30 transcript and audio pieces, 2.8 s of speech), one from the local Chat
Completions server, the other from the local Realtime server replaying it as Realtime events
(tests/upstream_server.py, tests/realtime_server.py, in this process on the load cores). Rounds alternate
between the two, so drift of a shared machine hits both alike. Per turn: the gateway's CPU (user +
system, /proc) and the client's time to first audio; the report gives each and their ratio.

    python -m benchmarks.realtime_upstream [--turns 200] [--concurrency 8] [--rounds 5]

writes benchmarks/results/realtime_upstream.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import grpc

from audiochat.v1 import audiochat_pb2 as pb
from audiochat.v1 import audiochat_pb2_grpc as pb_grpc
from benchmarks.processes import Child, pin_self, plan_placement, sample
from tests.realtime_server import RealtimeServer
from tests.upstream_server import FixtureUpstream

RESULTS = Path(__file__).parent / "results"
MODEL = "fixture/audio_no_finish_reason"


def start_gateway(upstream: str, base_url: str, cores: frozenset[int]) -> tuple[Child, int]:
    """`audiochat serve --role core` on `upstream` at `base_url`; the child and its gRPC port."""
    env = {
        "OPENAI_API_KEY": "sk-test",
        "OPENAI_BASE_URL": base_url,
        "AUDIOCHAT_UPSTREAM": upstream,
        "AUDIOCHAT_ROLE": "core",
        "AUDIOCHAT_BIND": "127.0.0.1",
        "AUDIOCHAT_GRPC_PORT": "0",
        "AUDIOCHAT_METRICS_PORT": "0",
        "AUDIOCHAT_UPSTREAM_MAX_RETRIES": "0",
    }
    child = Child.start([sys.executable, "-m", "service.cli", "serve"], cores, env, "stderr")
    try:
        return child, int(child.wait_for_json("message", "gRPC service listening")["port"])
    except BaseException:
        child.stop()
        raise


async def batch(stub: Any, turns: int, concurrency: int) -> list[float]:
    """Run `turns` StreamTurns, `concurrency` at a time; each one's time to first audio in ms."""
    request = pb.StreamTurnRequest(config=pb.TurnConfig(model=MODEL), input=pb.UserMessage(text="Hi"))
    waits: list[float] = []
    queue = iter(range(turns))

    async def user() -> None:
        for _ in queue:
            sent, first = time.perf_counter(), None
            async for event in stub.StreamTurn(request):
                if first is None and event.HasField("audio"):
                    first = time.perf_counter()
                if event.HasField("completed"):
                    assert event.completed.reason == pb.FINISH_REASON_STOP, event.completed
            assert first is not None
            waits.append((first - sent) * 1000)

    await asyncio.gather(*(user() for _ in range(concurrency)))
    return waits


async def converse_batch(stub: Any, turns: int, concurrency: int) -> list[float]:
    """The same turns as `batch`, each user's in one Converse call (one Realtime session per call)."""
    waits: list[float] = []
    queue = iter(range(turns))
    config = pb.ConverseRequest(config=pb.ConverseConfig(turn=pb.TurnConfig(model=MODEL)))

    async def user() -> None:
        call = stub.Converse()
        await call.write(config)
        assert (await call.read()).HasField("started")
        for _ in queue:
            sent, first = time.perf_counter(), None
            await call.write(pb.ConverseRequest(text=pb.TextInput(text="Hi")))
            while True:
                event = (await call.read()).event
                if first is None and event.HasField("audio"):
                    first = time.perf_counter()
                if event.HasField("completed"):
                    assert event.completed.reason == pb.FINISH_REASON_STOP, event.completed
                    break
            assert first is not None
            waits.append((first - sent) * 1000)
        await call.done_writing()
        while await call.read() is not grpc.aio.EOF:
            pass

    await asyncio.gather(*(user() for _ in range(concurrency)))
    return waits


CALLS = {"stream_turn": batch, "converse": converse_batch}


async def measure(turns: int, concurrency: int, rounds: int) -> dict[str, Any]:
    placement = plan_placement()
    pin_self(placement)
    async with FixtureUpstream() as chat_server, RealtimeServer() as realtime_server:
        gateways = {
            "chat_completions": start_gateway("openai", chat_server.base_url, placement.gateway_cores),
            "realtime": start_gateway("openai-realtime", realtime_server.base_url, placement.gateway_cores),
        }
        try:
            rows = [(call, name) for call in CALLS for name in gateways]
            cpu: dict[tuple[str, str], list[float]] = {row: [] for row in rows}
            waits: dict[tuple[str, str], list[float]] = {row: [] for row in rows}
            for round_index in range(rounds + 1):  # round 0 warms both up and is not counted
                for call, name in rows:
                    child, port = gateways[name]
                    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                        stub = pb_grpc.AudioChatServiceStub(channel)
                        before = sample(child.process.pid)
                        got = await CALLS[call](stub, turns, concurrency)
                        after = sample(child.process.pid)
                    if round_index:
                        cpu[call, name].append((after.cpu_seconds - before.cpu_seconds) * 1000 / turns)
                        waits[call, name].extend(got)
        finally:
            for child, _ in gateways.values():
                child.stop()
    result: dict[str, Any] = {
        "turns_per_round": turns,
        "concurrency": concurrency,
        "rounds": rounds,
        "placement": placement.describe(),
    }
    for call in CALLS:
        by_upstream: dict[str, Any] = {}
        for name in gateways:
            by_upstream[name] = {
                "gateway_cpu_ms_per_turn": statistics.median(cpu[call, name]),
                "time_to_first_audio_ms_p50": statistics.median(waits[call, name]),
            }
        for key in ("gateway_cpu_ms_per_turn", "time_to_first_audio_ms_p50"):
            by_upstream[f"{key}_ratio"] = by_upstream["realtime"][key] / by_upstream["chat_completions"][key]
        result[call] = by_upstream
    return result


def markdown(result: dict[str, Any]) -> str:
    rows = [
        "| call | upstream | gateway CPU per turn (ms, median of rounds) | time to first audio p50 (ms) |",
        "|---|---|---|---|",
    ]
    for call in CALLS:
        for name in ("chat_completions", "realtime"):
            row = result[call][name]
            cpu, wait = row["gateway_cpu_ms_per_turn"], row["time_to_first_audio_ms_p50"]
            rows.append(f"| {call} | {name} | {cpu:.2f} | {wait:.2f} |")
        ratios = result[call]
        rows.append(
            f"| {call} | realtime / chat_completions | {ratios['gateway_cpu_ms_per_turn_ratio']:.2f} | "
            f"{ratios['time_to_first_audio_ms_p50_ratio']:.2f} |"
        )
    head = (
        f"{result['rounds']} rounds of {result['turns_per_round']} turns at concurrency "
        f"{result['concurrency']} per call kind and upstream (Converse: each user's turns in one call), "
        f"the capture {MODEL}; {result['placement']}.\n\n"
    )
    return head + "\n".join(rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    result = asyncio.run(measure(args.turns, args.concurrency, args.rounds))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "realtime_upstream.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "realtime_upstream.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
