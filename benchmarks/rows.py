"""The rows of the benchmark: what serves each one (nothing, the relay, the gateway, LiteLLM) and its client.

Every row's client is lean (`raw_http`, grpc's C core, `websockets`) so that the load side stays well
under its core; the server process of a row is started fresh for each run and pinned to the gateway core,
and its CPU is what the row is charged.
"""

from __future__ import annotations

import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from benchmarks import processes
from benchmarks.clients import QUESTION, GrpcConverse, GrpcStreamTurn
from benchmarks.edge_clients import EdgeWebSocket
from benchmarks.load import Transport
from benchmarks.raw_http import RawChatCompletions, RawEdgeSSE

LITELLM_START_TIMEOUT_SECONDS = 120.0
# LiteLLM refuses to start without a strong master key; this one guards a loopback port for one run.
LITELLM_MASTER_KEY = "sk-5c5ce9c30bb2b498bf589f8db36e8829f9dcd268b2ac48ec"


@dataclass(frozen=True)
class Served:
    """A row's server while it runs: its process (None for the direct row) and where to reach it."""

    pid: int | None
    http_url: str = ""  # base URL of its HTTP side, without a trailing slash
    grpc_target: str = ""
    api_key: str = "sk-bench"
    metrics_url: str = ""  # the gateway's /metrics, for its garbage-collection pauses


@dataclass(frozen=True)
class Row:
    """One kind of row: `key` on the command line (`--rows`, `make profile TRANSPORT=`), `name` in tables."""

    key: str
    name: str
    server: str  # "direct", "relay", "gateway" or "litellm"
    client: Callable[[Served, int], Transport]
    relays: bool = True  # False only for the direct row: nothing between client and simulator


ROWS: dict[str, Row] = {
    row.key: row
    for row in (
        Row(
            "direct",
            "direct (no relay)",
            "direct",
            lambda s, n: RawChatCompletions("direct (no relay)", s.http_url + "/v1"),
            relays=False,
        ),
        Row(
            "relay",
            "no-logic relay (aiohttp)",
            "relay",
            lambda s, n: RawChatCompletions("no-logic relay (aiohttp)", s.http_url + "/v1"),
        ),
        Row("grpc", "grpc StreamTurn", "gateway", lambda s, n: GrpcStreamTurn(s.grpc_target, n)),
        Row("converse", "grpc Converse", "gateway", lambda s, n: GrpcConverse(s.grpc_target, n)),
        Row("sse", "sse", "gateway", lambda s, n: RawEdgeSSE(s.http_url, QUESTION)),
        Row("websocket", "websocket", "gateway", lambda s, n: EdgeWebSocket(s.http_url)),
        Row(
            "compat",
            "openai-compatible",
            "gateway",
            lambda s, n: RawChatCompletions("openai-compatible", s.http_url + "/v1"),
        ),
        Row(
            "litellm",
            "LiteLLM proxy (1 worker)",
            "litellm",
            lambda s, n: RawChatCompletions("LiteLLM proxy (1 worker)", s.http_url + "/v1", s.api_key),
        ),
    )
}
GATEWAY_ROWS = tuple(key for key, row in ROWS.items() if row.server == "gateway")


@dataclass(frozen=True)
class Setup:
    """What every row's server needs: the simulator, the placement, and where LiteLLM is installed."""

    sim_port: int
    placement: processes.Placement
    edge: bool
    litellm: Path | None = None
    gateway_repo: Path = processes.REPO  # the tree `audiochat serve` runs from (`--compare` sets another)


@contextmanager
def serve(row: Row, setup: Setup) -> Iterator[Served]:
    """Start the row's server (fresh, pinned to the gateway core), yield how to reach it, stop it."""
    sim = f"http://127.0.0.1:{setup.sim_port}"
    if row.server == "direct":
        yield Served(None, sim)
        return
    if row.server == "gateway":
        gateway = processes.start_gateway(setup.sim_port, setup.placement, setup.edge, setup.gateway_repo)
        try:
            http = f"http://127.0.0.1:{gateway.http_port}" if gateway.http_port else ""
            metrics = f"http://127.0.0.1:{gateway.metrics_port}/metrics"
            yield Served(gateway.pid, http, f"127.0.0.1:{gateway.grpc_port}", metrics_url=metrics)
        finally:
            gateway.child.stop()
        return
    if row.server == "relay":
        command = [sys.executable, "-m", "benchmarks.relay", "--upstream", sim + "/v1"]
        child = processes.Child.start(command, setup.placement.gateway_cores, {}, "stdout")
        try:
            port = int(child.wait_for_json("port")["port"])
            yield Served(child.process.pid, f"http://127.0.0.1:{port}")
        finally:
            child.stop()
        return
    if row.server == "litellm":
        with _litellm(setup, sim) as served:
            yield served
        return
    raise ValueError(f"unknown server kind {row.server!r}")


LITELLM_CONFIG = """\
model_list:
  - model_name: gpt-4o-audio-preview
    litellm_params:
      model: openai/gpt-4o-audio-preview
      api_base: {api_base}
      api_key: sk-bench
litellm_settings:
  drop_params: false
  request_timeout: 30
"""


@contextmanager
def _litellm(setup: Setup, sim: str) -> Iterator[Served]:
    """LiteLLM's proxy, one worker, no database, pointed at the simulator like the gateway."""
    if setup.litellm is None:
        raise RuntimeError("LiteLLM rows need --litellm (make bench-peers installs it)")
    port = processes.free_port()
    with tempfile.TemporaryDirectory(prefix="bench-litellm-") as folder:
        config = Path(folder) / "config.yaml"
        config.write_text(LITELLM_CONFIG.format(api_base=sim + "/v1"))
        command = [
            str(setup.litellm),
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--num_workers",
            "1",
        ]
        # No database and no telemetry: the proxy as a pure relay, the way the issue compares it.
        env = {
            "LITELLM_LOG": "ERROR",
            "LITELLM_TELEMETRY": "False",
            "DISABLE_SCHEMA_UPDATE": "True",
            "LITELLM_MASTER_KEY": LITELLM_MASTER_KEY,
            # Its model price list from the package, not the network (which a benchmark must not need).
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        }
        child = processes.Child.start(command, setup.placement.gateway_cores, env, "stderr")
        try:
            _wait_http(f"http://127.0.0.1:{port}/health/liveliness", child)
            yield Served(child.process.pid, f"http://127.0.0.1:{port}", api_key=LITELLM_MASTER_KEY)
        finally:
            child.stop()


def _wait_http(url: str, child: processes.Child) -> None:
    deadline = time.monotonic() + LITELLM_START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if child.process.poll() is not None:
            tail = "\n".join(list(child.lines)[-20:])
            raise RuntimeError(f"LiteLLM exited ({child.process.returncode}):\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"LiteLLM did not answer {url} within {LITELLM_START_TIMEOUT_SECONDS:.0f} s")
