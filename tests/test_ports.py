"""A port that cannot be bound costs one line naming it and the setting that changes it, and exit status 2,
for every port and role; and the servers report it the same way when they lose a race for a probed port."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator

import pytest

from adapters.edge_server import EdgeServer
from service.listen import ListenError
from service.server import AudioChatServer
from service.settings import Settings
from service.upstream import OpenAIUpstream
from tests.processes import AUDIOCHAT, REPO, offline_environment


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port another socket listens on for the whole test."""
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield int(holder.getsockname()[1])


@pytest.mark.parametrize(
    ("arguments", "variable", "flag"),
    [
        (["serve", "--grpc-port", "{port}"], "AUDIOCHAT_GRPC_PORT", "--grpc-port"),
        (["serve", "--http-port", "{port}"], "AUDIOCHAT_HTTP_PORT", "--http-port"),
        (["serve", "--role", "core"], "AUDIOCHAT_METRICS_PORT", None),
        (["edge", "--target", "127.0.0.1:9", "--http-port", "{port}"], "AUDIOCHAT_HTTP_PORT", "--http-port"),
    ],
)
def test_a_taken_port_is_one_line_and_exit_status_2(
    taken_port: int, arguments: list[str], variable: str, flag: str | None
) -> None:
    environment = {
        **offline_environment(),
        "AUDIOCHAT_BIND": "127.0.0.1",
        "AUDIOCHAT_GRPC_PORT": "0",
        "AUDIOCHAT_HTTP_PORT": "0",
        "AUDIOCHAT_METRICS_PORT": "0",
        variable: str(taken_port),
    }
    command = [*AUDIOCHAT, *(argument.format(port=taken_port) for argument in arguments)]
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"audiochat: cannot listen on 127.0.0.1:{taken_port} for ")
    assert "address already in use" in line
    assert line.endswith(f"{flag} or {variable}" if flag else variable)


async def test_the_grpc_server_names_its_setting_when_it_loses_the_race(taken_port: int) -> None:
    settings = Settings(bind="127.0.0.1", grpc_port=taken_port)
    upstream = OpenAIUpstream(api_key="unused", base_url="http://127.0.0.1:9/v1")
    try:
        with pytest.raises(ListenError, match=f"127.0.0.1:{taken_port} for gRPC.*AUDIOCHAT_GRPC_PORT"):
            await AudioChatServer(settings, upstream).start()
    finally:
        await upstream.close()


async def test_the_edge_names_its_setting_when_it_loses_the_race(taken_port: int) -> None:
    settings = Settings(bind="127.0.0.1", http_port=taken_port, role="edge", core_target="127.0.0.1:9")
    with pytest.raises(ListenError, match=f"127.0.0.1:{taken_port} for HTTP edge.*AUDIOCHAT_HTTP_PORT"):
        await EdgeServer(settings, settings.core_target).start()
