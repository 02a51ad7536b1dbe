"""The container image, without a container engine: the Dockerfile read as instructions, the pins it
installs, the build context it sees, and its entrypoint started with the chart's own arguments as PID 1.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import grpc
import helm_python as helm
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
CHART_VALUES = yaml.safe_load((ROOT / "helm" / "audiochat" / "values.yaml").read_text())


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str


def dockerfile_stages() -> list[list[Instruction]]:
    """The Dockerfile's instructions (continuations joined, comments dropped), one list per stage."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    stages: list[list[Instruction]] = [[]]
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, arguments = line.partition(" ")
        instruction = Instruction(keyword.upper(), " ".join(arguments.split()))
        if instruction.keyword == "FROM":
            stages.append([])
        stages[-1].append(instruction)
    return stages


def arguments_of(stage: list[Instruction], keyword: str) -> list[str]:
    return [instruction.arguments for instruction in stage if instruction.keyword == keyword]


# --- The Dockerfile -------------------------------------------------------------------------------


def test_two_stages_on_one_slim_python_matching_the_project() -> None:
    preamble, *stages = dockerfile_stages()
    assert len(stages) == 2
    [base] = [arg for arg in arguments_of(preamble, "ARG") if arg.startswith("PYTHON_IMAGE=")]
    image = base.removeprefix("PYTHON_IMAGE=")
    assert re.fullmatch(r"python:3\.\d+-slim(-\w+)?", image)
    # The virtualenv is copied between stages, so both must be the very same Python.
    assert [stage[0].arguments.split()[0] for stage in stages] == ["${PYTHON_IMAGE}"] * 2
    python = Version(image.split(":")[1].split("-")[0])
    assert SpecifierSet(PYPROJECT["project"]["requires-python"]).contains(python)
    # The lock was resolved for every Python the project allows, so for the image's too.
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    assert SpecifierSet(lock["requires-python"]).contains(python)


def test_build_stage_installs_exactly_the_lock_then_checks_it() -> None:
    build = dockerfile_stages()[1]
    runs = arguments_of(build, "RUN")
    # Dependencies from the lock alone (wheels only, nothing resolved), then the project as a wheel.
    assert "uv sync --locked --no-install-project --no-build" in runs
    assert any(run.startswith("uv sync --locked --no-editable") and "uv pip check" in run for run in runs)
    environment = " ".join(arguments_of(build, "ENV"))
    for setting in ("UV_PROJECT_ENVIRONMENT=/opt/venv", "UV_PYTHON_DOWNLOADS=never", "UV_COMPILE_BYTECODE=1"):
        assert setting in environment
    # The lock is installed before the source is copied, so code changes keep the dependency layer.
    keywords = [(i.keyword, i.arguments) for i in build]
    assert keywords.index(("COPY", "pyproject.toml uv.lock ./")) < keywords.index(
        ("COPY", "service/ service/")
    )


def test_final_stage_runs_audiochat_as_an_unprivileged_pid_1() -> None:
    final = dockerfile_stages()[-1]
    runs = " ".join(arguments_of(final, "RUN"))
    for tool in ("apt-get", "gcc", "build-essential", "make "):
        assert tool not in runs
    assert arguments_of(final, "COPY") == ["--from=build /opt/venv /opt/venv"]
    [user] = arguments_of(final, "USER")
    uid, _, gid = user.partition(":")
    security = CHART_VALUES["podSecurityContext"]
    assert (int(uid), int(gid)) == (security["runAsUser"], security["runAsGroup"])
    assert int(uid) != 0
    # Exec form (JSON), so no shell sits between the kernel's signals and the process.
    [entrypoint] = arguments_of(final, "ENTRYPOINT")
    assert json.loads(entrypoint) == ["audiochat"]
    [command] = arguments_of(final, "CMD")
    assert json.loads(command) == ["serve"]
    assert "audiochat" in PYPROJECT["project"]["scripts"]


def test_image_exposes_the_charts_ports() -> None:
    [exposed] = arguments_of(dockerfile_stages()[-1], "EXPOSE")
    ports = {CHART_VALUES["core"]["ports"]["grpc"], CHART_VALUES["core"]["ports"]["metrics"]}
    ports.add(CHART_VALUES["edge"]["ports"]["http"])
    assert {int(port) for port in exposed.split()} == ports


def dockerignore_allows(path: str) -> bool:
    """Docker's rule: the last matching pattern wins, and a pattern matching a parent directory counts."""
    allowed = True
    parts = path.split("/")
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        raw = raw.strip()
        if not raw or raw.startswith("#"):
            continue
        negated, pattern = raw.startswith("!"), raw.lstrip("!").rstrip("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        if any(
            fnmatchcase(prefix, pattern) or fnmatchcase(prefix, pattern.removeprefix("**/"))
            for prefix in prefixes
        ) or (pattern.startswith("**/") and any(fnmatchcase(part, pattern[3:]) for part in parts)):
            allowed = negated
    return allowed


def test_build_context_has_what_the_dockerfile_copies_and_nothing_private() -> None:
    copied = [
        shlex.split(arguments)[0]
        for stage in dockerfile_stages()
        for arguments in arguments_of(stage, "COPY")
        if not arguments.startswith("--from")
    ]
    sources = [path for item in copied for path in item.split()]
    for source in sources:
        assert dockerignore_allows(source.rstrip("/")), source
    assert dockerignore_allows("service/cli.py")
    assert dockerignore_allows("gen/audiochat/v1/audiochat_pb2.py")
    for private in (
        ".venv/bin/python",
        ".git/config",
        ".env",
        "tests/test_container.py",
        "service/__pycache__/x.pyc",
    ):
        assert not dockerignore_allows(private), private


# --- The entrypoint, with the chart's arguments ---------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def chart_container(role: str) -> dict[str, Any]:
    """The container spec the chart gives a role, with the default values."""
    with helm.Chart.load(ROOT / "helm" / "audiochat") as chart:
        rendered = chart.render({}, name="t", namespace="t")["audiochat/templates/deployment.yaml"]
    [deployment] = [
        d for d in yaml.safe_load_all(rendered) if d and d["metadata"]["name"] == f"t-audiochat-{role}"
    ]
    [spec] = deployment["spec"]["template"]["spec"]["containers"]
    return dict(spec)


def entrypoint() -> str:
    script = Path(sys.executable).parent / "audiochat"
    if (
        not script.exists()
        or "--role"
        not in subprocess.run([script, "serve", "--help"], capture_output=True, text=True, check=False).stdout
    ):
        pytest.skip("the audiochat CLI has no `serve --role` yet")
    return str(script)


def as_pid_1() -> list[str]:
    """A prefix that runs a command as PID 1 of a new PID namespace, where the kernel, as in a container,
    delivers SIGTERM only if the process installed a handler; empty where namespaces are not allowed."""
    prefix = ["unshare", "--pid", "--fork", "--kill-child"]
    try:
        works = subprocess.run([*prefix, "true"], capture_output=True, check=False).returncode == 0
    except FileNotFoundError:
        works = False
    return prefix if works else []


@contextlib.contextmanager
def running(role: str, overrides: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    spec = chart_container(role)
    variables = {item["name"]: item["value"] for item in spec["env"] if "value" in item}
    variables.update(overrides, AUDIOCHAT_BIND="127.0.0.1", AUDIOCHAT_UPSTREAM="offline")
    args = list(spec["args"])
    if "--target" in args:
        args[args.index("--target") + 1] = overrides["AUDIOCHAT_CORE_TARGET"]
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("AUDIOCHAT_", "OPENAI_"))}
    process = subprocess.Popen([*as_pid_1(), entrypoint(), *args], env={**environment, **variables})
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def init_pid(process: subprocess.Popen[bytes]) -> int:
    """The host PID of the process that is PID 1 inside the namespace (or the process itself)."""
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
    if as_pid_1() and children.exists():
        return int(children.read_text().split()[0])
    return process.pid


def wait_until(check: Any, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            if check():
                return
        except (grpc.RpcError, OSError):
            pass
        assert time.monotonic() < deadline, "the server did not come up"
        time.sleep(0.2)


def core_serving(target: str) -> bool:
    with grpc.insecure_channel(target) as channel:
        request = health_pb2.HealthCheckRequest(service="audiochat.v1.AudioChatService")
        reply = health_pb2_grpc.HealthStub(channel).Check(request, timeout=2)
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as reply:
        return bool(reply.status == 200)


def stop(process: subprocess.Popen[bytes]) -> int:
    os.kill(init_pid(process), signal.SIGTERM)
    return process.wait(timeout=20)


@pytest.mark.slow
def test_core_and_edge_start_from_the_charts_arguments_and_drain_on_sigterm() -> None:
    grpc_port, metrics_port, http_port = free_port(), free_port(), free_port()
    target = f"127.0.0.1:{grpc_port}"
    core_env = {"AUDIOCHAT_GRPC_PORT": str(grpc_port), "AUDIOCHAT_METRICS_PORT": str(metrics_port)}
    edge_env = {"AUDIOCHAT_HTTP_PORT": str(http_port), "AUDIOCHAT_CORE_TARGET": target}
    with running("core", core_env) as core, running("edge", edge_env) as edge:
        wait_until(lambda: core_serving(target))
        wait_until(lambda: http_ok(f"http://127.0.0.1:{metrics_port}/metrics"))
        wait_until(lambda: http_ok(f"http://127.0.0.1:{http_port}/readyz"))
        assert http_ok(f"http://127.0.0.1:{http_port}/healthz")
        assert stop(edge) == 0
        assert stop(core) == 0
