"""The processes of a run: the gateway (`audiochat serve`) and the simulator, each pinned to its cores.

CPU time and memory are read from /proc, the way `top` does, so the gateway carries no instrumentation
of its own beyond what it ships with.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from benchmarks.pieces import Pacing
from benchmarks.simulator import pacing_argv

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT_SECONDS = 30.0
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Placement:
    """Which cores the gateway and the load side (load generator and simulator) run on."""

    gateway_cores: frozenset[int]
    load_cores: frozenset[int]

    @property
    def pinned(self) -> bool:
        """Whether the two sides are kept apart."""
        return bool(self.gateway_cores) and not (self.gateway_cores & self.load_cores)

    def describe(self) -> str:
        """One line for the report."""
        if not self.pinned:
            return (
                "not pinned (fewer than 2 usable cores or no affinity support): all processes share the CPU"
            )
        return (
            f"gateway pinned to core {_cores(self.gateway_cores)}; "
            f"simulator and load generator to core {_cores(self.load_cores)}"
        )


def _cores(cores: frozenset[int]) -> str:
    return ",".join(str(core) for core in sorted(cores))


def plan_placement() -> Placement:
    """Gateway on the first usable core, everything else on the others; unpinned on one core."""
    if not hasattr(os, "sched_getaffinity"):
        return Placement(frozenset(), frozenset())
    usable = sorted(os.sched_getaffinity(0))
    if len(usable) < 2:
        return Placement(frozenset(), frozenset())
    return Placement(frozenset(usable[:1]), frozenset(usable[1:]))


def pin_self(placement: Placement) -> None:
    """Pin this (load generator) process before it starts any thread, so its threads inherit the mask."""
    if placement.pinned:
        os.sched_setaffinity(0, placement.load_cores)


def _pinned_command(command: list[str], cores: frozenset[int]) -> list[str]:
    # taskset sets the mask before exec, so every thread the child starts later inherits it.
    taskset = shutil.which("taskset")
    if not cores or taskset is None:
        return command
    return [taskset, "-c", _cores(cores), *command]


def _environment(extra: dict[str, str], repo: Path = REPO) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "AUDIOCHAT_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(repo), str(repo / "gen")])
    env.update(extra)
    return env


def free_port() -> int:
    """A loopback port free now, for a server that cannot be told to pick its own (LiteLLM)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class Usage:
    """A process's CPU seconds (user + system, all threads) and resident memory at one moment."""

    at: float
    cpu_seconds: float
    rss_bytes: int


def sample(pid: int) -> Usage:
    """Read /proc/<pid>/stat and /proc/<pid>/status."""
    with open(f"/proc/{pid}/stat") as stat:
        # The command name may hold spaces; the fields after its closing parenthesis do not.
        fields = stat.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    rss = 0
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
                break
    return Usage(time.monotonic(), cpu, rss)


@dataclass
class Child:
    """A started process whose stdout or stderr is read line by line by a thread."""

    process: subprocess.Popen[str]
    lines: deque[str] = field(default_factory=lambda: deque(maxlen=200))
    _seen: threading.Condition = field(default_factory=threading.Condition)
    _reader: threading.Thread | None = None

    @classmethod
    def start(
        cls, command: list[str], cores: frozenset[int], env: dict[str, str], stream: str, repo: Path = REPO
    ) -> Child:
        """Start `command` pinned to `cores` in `repo`'s tree; read its `stream` ("stdout" or "stderr")."""
        process = subprocess.Popen(
            _pinned_command(command, cores),
            env=_environment(env, repo),
            cwd=repo,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if stream == "stdout" else subprocess.DEVNULL,
            stderr=subprocess.PIPE if stream == "stderr" else subprocess.DEVNULL,
            text=True,
        )
        child = cls(process)
        pipe = process.stdout if stream == "stdout" else process.stderr
        assert pipe is not None
        # The pipe must be drained while the process runs, or it blocks once the pipe buffer is full.
        child._reader = threading.Thread(target=child._read, args=(pipe,), daemon=True)
        child._reader.start()
        return child

    def _read(self, pipe: Any) -> None:
        for line in pipe:
            with self._seen:
                self.lines.append(line.rstrip("\n"))
                self._seen.notify_all()
        with self._seen:
            self._seen.notify_all()

    def wait_for_json(self, key: str, value: object = None, timeout: float = START_TIMEOUT_SECONDS) -> Any:
        """The first JSON line holding `key` (equal to `value` if given); raises if the process ends first."""
        deadline = time.monotonic() + timeout
        checked = 0
        with self._seen:
            while True:
                lines = list(self.lines)
                for line in lines[checked:]:
                    try:
                        record = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(record, dict) and key in record and value in (None, record[key]):
                        return record
                checked = len(lines)
                if self.process.poll() is not None:
                    tail = "\n".join(lines[-20:])
                    raise RuntimeError(f"process exited ({self.process.returncode}) early:\n{tail}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no line with {key}={value!r} within {timeout} s")
                self._seen.wait(min(remaining, 0.5))

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)  # the pipe reached its end when the process exited
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()


def start_simulator(pacing: Pacing, placement: Placement) -> tuple[Child, int]:
    """The simulator process on the load cores, and its port."""
    command = [sys.executable, "-m", "benchmarks.simulator", "--port", "0", *pacing_argv(pacing)]
    child = Child.start(command, placement.load_cores, {}, "stdout")
    try:
        return child, int(child.wait_for_json("port")["port"])
    except BaseException:
        child.stop()
        raise


@dataclass
class Gateway:
    """A running `audiochat serve` against the simulator."""

    child: Child
    grpc_port: int
    metrics_port: int
    http_port: int | None

    @property
    def pid(self) -> int:
        """The process id, for /proc."""
        return self.child.process.pid


def start_gateway(simulator_port: int, placement: Placement, edge: bool, repo: Path = REPO) -> Gateway:
    """`audiochat serve` from `repo`'s tree on the gateway cores, every port free, JSON logs on stderr."""
    env = {
        "OPENAI_API_KEY": "sk-bench",
        "OPENAI_BASE_URL": f"http://127.0.0.1:{simulator_port}/v1",
        "AUDIOCHAT_UPSTREAM": "openai",
        "AUDIOCHAT_BIND": "127.0.0.1",
        "AUDIOCHAT_GRPC_PORT": "0",
        "AUDIOCHAT_METRICS_PORT": "0",
        "AUDIOCHAT_HTTP_PORT": "0",
        # The sweep goes past the default admission limit on purpose.
        "AUDIOCHAT_MAX_STREAMS": "100000",
        "AUDIOCHAT_UPSTREAM_MAX_RETRIES": "0",
    }
    command = [sys.executable, "-m", "service.cli", "serve"]
    child = Child.start(command, placement.gateway_cores, env, "stderr", repo)
    try:
        grpc_port = int(child.wait_for_json("message", "gRPC service listening")["port"])
        child.wait_for_json("message", "audiochat ready")
        metrics = child.wait_for_json("metrics_port")
        http_port = int(child.wait_for_json("message", "edge listening")["port"]) if edge else None
        return Gateway(child, grpc_port, int(metrics["metrics_port"]), http_port)
    except BaseException:
        child.stop()
        raise


async def wait_ready(http_base: str, timeout_seconds: float = 30.0) -> None:
    """Poll `http_base`/readyz until it answers 200; RuntimeError after `timeout_seconds`."""
    async with httpx.AsyncClient(base_url=http_base, timeout=2) as client:
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            try:
                if (await client.get("/readyz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{http_base} did not become ready within {timeout_seconds:g} s")
