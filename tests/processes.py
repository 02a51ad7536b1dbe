"""Run `audiochat serve` as a real process, the way a user does, and find its ports from its log."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

AUDIOCHAT = [sys.executable, "-m", "service.cli"]
REPO = Path(__file__).resolve().parent.parent


def offline_environment() -> dict[str, str]:
    """This process's environment without any OpenAI key, so the offline voice answers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "AUDIOCHAT_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "gen")])
    return env


@dataclass
class ServeProcess:
    """A running `audiochat serve` and what it logged."""

    process: subprocess.Popen[str]
    log_lines: list[dict[str, Any]] = field(default_factory=list)

    def wait_for(self, message: str, timeout: float = 30.0) -> dict[str, Any]:
        """Read the log until a line with this message appears; return that line."""
        assert self.process.stderr is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            raw = self.process.stderr.readline()
            if not raw:
                raise AssertionError(
                    f"audiochat serve exited ({self.process.poll()}) before logging {message!r}"
                )
            line: dict[str, Any] = json.loads(raw)
            self.log_lines.append(line)
            if line["message"] == message:
                return line
        raise AssertionError(f"no {message!r} within {timeout} s")

    def stop(self) -> int:
        """SIGTERM, then the exit status."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        finally:
            if self.process.poll() is None:
                self.process.kill()


@contextmanager
def audiochat_serve(*args: str, env: dict[str, str] | None = None) -> Iterator[ServeProcess]:
    """Start `audiochat serve ARGS` on free ports (unless `env` names some); stop it at the end."""
    process = subprocess.Popen(
        [*AUDIOCHAT, "serve", "--bind", "127.0.0.1", "--grpc-port", "0", *args],
        # Every port free-picked, so tests never collide with a running `make run` or each other.
        env={
            **offline_environment(),
            "AUDIOCHAT_METRICS_PORT": "0",
            "AUDIOCHAT_HTTP_PORT": "0",
            **(env or {}),
        },
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    serve = ServeProcess(process)
    try:
        yield serve
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        assert process.stderr is not None
        process.stderr.close()
