"""What a fresh process exposes: loopback only by default, and an edge whose core is down says so."""

from __future__ import annotations

import asyncio
import socket
import subprocess
from pathlib import Path

import httpx

from tests.processes import AUDIOCHAT, REPO, ServeProcess, audiochat_serve, offline_environment

# 127.0.0.1 as /proc/net/tcp writes it, the same as an IPv4-mapped IPv6 address (gRPC's way), and ::1.
LOOPBACK = {"0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000"}


def listening_addresses(port: int) -> set[str]:
    """Local addresses of the sockets listening on `port` (hex, as the kernel lists them)."""
    found = set()
    for table in (Path("/proc/net/tcp"), Path("/proc/net/tcp6")):
        for line in table.read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


def spawn(*args: str) -> ServeProcess:
    env = {**offline_environment(), "AUDIOCHAT_HTTP_PORT": "0", "AUDIOCHAT_METRICS_PORT": "0"}
    process = subprocess.Popen(
        [*AUDIOCHAT, *args], env=env, cwd=REPO, text=True,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    return ServeProcess(process)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_serve_listens_on_loopback_only_unless_told_otherwise() -> None:
    serve = spawn("serve", "--grpc-port", "0")
    try:
        ready = serve.wait_for("audiochat ready")
        metrics = next(line for line in serve.log_lines if line["message"] == "metrics at /metrics")
        ports = {"grpc": ready["grpc_port"], "http": ready["http_port"], "metrics": metrics["metrics_port"]}
        listening = {name: listening_addresses(port) for name, port in ports.items()}
        assert all(addresses and addresses <= LOOPBACK for addresses in listening.values()), listening
        assert serve.stop() == 0
    finally:
        serve.process.kill()
        serve.process.wait()
        assert serve.process.stderr is not None
        serve.process.stderr.close()


async def test_an_edge_whose_core_is_down_says_so_without_leaking_where_it_is() -> None:
    core_port = free_port()
    edge = spawn("edge", "--target", f"127.0.0.1:{core_port}")
    try:
        http_port = (await asyncio.to_thread(edge.wait_for, "edge listening"))["port"]
        warning = await asyncio.to_thread(edge.wait_for, "audiochat edge started, but not ready")
        assert warning["level"] == "warning"
        assert not any(line["message"] == "audiochat edge ready" for line in edge.log_lines)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}", timeout=30) as client:
            ready = await client.get("/readyz")
            turn = await client.post("/v1/turns", json={"text": "Hi"})
            compat = await client.post(
                "/v1/chat/completions",
                json={"model": "gpt-4o-audio-preview", "messages": [{"role": "user", "content": "Hi"}]},
            )
        assert ready.status_code == 503 and ready.text.startswith("core not reachable: ")
        for response in (ready, turn, compat):
            assert "127.0.0.1" not in response.text and str(core_port) not in response.text, response.text
            assert "Error" not in response.text.replace("error", ""), response.text  # no class names
        assert turn.status_code == compat.status_code == 503
        # Once the core comes up, the edge says it is ready.
        with audiochat_serve("--role", "core", "--grpc-port", str(core_port)) as core:
            await asyncio.to_thread(core.wait_for, "audiochat ready")
            await asyncio.to_thread(edge.wait_for, "audiochat edge ready")
    finally:
        edge.process.kill()
        edge.process.wait()
        assert edge.process.stderr is not None
        edge.process.stderr.close()
