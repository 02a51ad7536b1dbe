"""The code samples of README.md and adapters/PROTOCOL.md, extracted from the Markdown and run against a real
`audiochat serve` on the offline voice: a sample that breaks fails `make test`.

Every fenced block is either run (by its language) or listed in NOT_RUN with the reason, so a new sample is
never silently unchecked. The only edits made before running are the ones a reader makes: the service's
address (the test's free ports for localhost:50051 and localhost:8080), and for browser-only samples the
names the text leaves to the reader (`host`, `key`, `handleEvent`, `play`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.processes import REPO, audiochat_serve, offline_environment

DOCS = (REPO / "README.md", REPO / "adapters" / "PROTOCOL.md")
NODE = shutil.which("node")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
RUN_SECONDS = 120

# Blocks that are not run, by document and the start of their first line, with the reason.
NOT_RUN: dict[tuple[str, str], str] = {
    ("README.md", "make run    #"): "starts the long-running service this test starts itself",
    ("README.md", "export OPENAI_API_KEY"): "needs a real OpenAI key",
    (
        "README.md",
        "AUDIOCHAT_UPSTREAM=offline-realtime make run",
    ): "starts the long-running service (tests/test_offline_realtime_serve.py runs that serve)",
    ("README.md", "docker build"): "needs a container engine and a registry",
    (
        "README.md",
        "kubectl create namespace",
    ): "needs a Kubernetes cluster (tests/test_helm_chart.py renders the chart)",
    ("README.md", "proto/audiochat/v1/"): "a directory listing",
    (
        "README.md",
        ".venv/bin/python -m benchmarks --litellm",
    ): "the committed benchmark's half-hour run (make bench-peers installs LiteLLM)",
    ("PROTOCOL.md", "GET /v1/converse"): "the handshake's request lines, as the text explains them",
    ("PROTOCOL.md", "offset  size"): "the binary frame's layout, checked by tests/test_edge_websocket.py",
}


@dataclass(frozen=True)
class Sample:
    doc: str
    line: int
    language: str
    code: str

    @property
    def key(self) -> tuple[str, str]:
        return self.doc, self.code.lstrip().splitlines()[0] if self.code.strip() else ""

    def __str__(self) -> str:
        return f"{self.doc}:{self.line} ({self.language or 'plain'})"


def extract(path: Path) -> list[Sample]:
    """Every fenced block of a Markdown file, with its language and the line it starts on."""
    samples: list[Sample] = []
    lines = path.read_text().splitlines()
    index = 0
    while index < len(lines):
        fence = re.match(r"^```(\w*)\s*$", lines[index])
        if fence is None:
            index += 1
            continue
        end = next(i for i in range(index + 1, len(lines)) if lines[i].startswith("```"))
        samples.append(Sample(path.name, index + 1, fence.group(1), "\n".join(lines[index + 1 : end]) + "\n"))
        index = end + 1
    return samples


SAMPLES = [sample for doc in DOCS for sample in extract(doc)]


def not_run(sample: Sample) -> str | None:
    return next(
        (
            why
            for (doc, start), why in NOT_RUN.items()
            if sample.doc == doc and sample.key[1].startswith(start)
        ),
        None,
    )


def follows_command(sample: Sample) -> bool:
    """A plain block right after a shell block is that command's output, checked with it."""
    position = SAMPLES.index(sample)
    return sample.language == "" and position > 0 and SAMPLES[position - 1].language in ("sh", "bash")


@dataclass
class Service:
    grpc: str
    http: str

    def localize(self, code: str) -> str:
        return code.replace("localhost:50051", self.grpc).replace("localhost:8080", self.http)


@pytest.fixture(scope="module")
def service() -> Iterator[Service]:
    with audiochat_serve() as serve:
        ready = serve.wait_for("audiochat ready")
        yield Service(f"127.0.0.1:{ready['grpc_port']}", f"127.0.0.1:{ready['http_port']}")
        assert serve.stop() == 0


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A fresh directory with the repository's .venv in reach, as a reader's checkout has it."""
    (tmp_path / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    return tmp_path


def run(command: list[str], workdir: Path, service: Service) -> subprocess.CompletedProcess[str]:
    # As a reader with the venv active: `audiochat` on PATH, and the service's address as the default.
    environment = offline_environment()
    environment["PATH"] = os.pathsep.join([str(Path(sys.prefix) / "bin"), environment.get("PATH", "")])
    environment["AUDIOCHAT_TARGET"] = service.grpc
    result = subprocess.run(
        command,
        cwd=workdir,
        env=environment,
        capture_output=True,
        text=True,
        timeout=RUN_SECONDS,
        check=False,
    )
    assert result.returncode == 0, (
        f"{command}: exit {result.returncode}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    )
    return result


def as_pattern(expected: str) -> re.Pattern[str]:
    """An output line shown in the docs, with its numbers (timings, sizes) left free and a trailing note set
    off by two spaces, like `(on stderr)`, left out."""
    expected = re.sub(r"\s{2,}\([^()]*\)$", "", expected.strip())
    parts = re.split(r"\d+(?:\.\d+)?", expected)
    return re.compile(r"\d+(?:\.\d+)?".join(re.escape(part) for part in parts))


def test_every_block_is_run_or_says_why_not() -> None:
    runnable = {"python", "sh", "bash", "js", "yaml", "json"}
    unchecked = [
        str(sample)
        for sample in SAMPLES
        if sample.language not in runnable and not follows_command(sample) and not_run(sample) is None
    ]
    assert not unchecked, f"classify these samples in NOT_RUN or give them a language: {unchecked}"
    stale = [
        key
        for key in NOT_RUN
        if not any(sample.key[0] == key[0] and sample.key[1].startswith(key[1]) for sample in SAMPLES)
    ]
    assert not stale, f"NOT_RUN names blocks the docs no longer have: {stale}"


def select(*languages: str) -> list[Any]:
    return [
        pytest.param(sample, id=f"{sample.doc}:{sample.line}")
        for sample in SAMPLES
        if sample.language in languages and not_run(sample) is None
    ]


@pytest.mark.parametrize("sample", select("python"))
def test_python_sample_runs(sample: Sample, service: Service, workdir: Path) -> None:
    (workdir / "sample.py").write_text(service.localize(sample.code))
    result = run([sys.executable, "sample.py"], workdir, service)
    if "print(" in sample.code:
        assert "golden retriever" in result.stdout or "Hello" in result.stdout, result.stdout[-1000:]
    for written in re.findall(r'wave\.open\("([^"]+)", "wb"\)', sample.code):
        assert (workdir / written).stat().st_size > 44 + 24_000, f"{written} holds no audio"


@pytest.mark.parametrize("sample", select("sh", "bash"))
def test_shell_sample_runs_and_prints_what_the_docs_show(
    sample: Sample, service: Service, workdir: Path
) -> None:
    position = SAMPLES.index(sample)
    shown_after = (
        SAMPLES[position + 1]
        if position + 1 < len(SAMPLES) and follows_command(SAMPLES[position + 1])
        else None
    )
    commands: list[tuple[str, list[str]]] = []
    for line in sample.code.replace("\\\n", " ").splitlines():
        if line.startswith("# ") and commands:
            commands[-1][1].append(line[2:])
        elif line.strip() and not line.startswith("#"):
            commands.append((line, []))
    assert commands, f"{sample} has no command"
    for command, expected in commands:
        result = run(["bash", "-c", service.localize(command)], workdir, service)
        printed = (result.stdout + result.stderr).splitlines()
        for line in expected:
            assert any(as_pattern(line).fullmatch(out.strip()) for out in printed), (
                f"{command}: no {line!r} in {printed}"
            )
        if shown_after is not None:
            check_sse_output(shown_after.code, result.stdout)


def check_sse_output(shown: str, actual: str) -> None:
    """The docs' SSE excerpt: each event has an id and a data line, and every event named happened."""
    shown_events = [block for block in shown.strip().split("\n\n") if block.strip()]
    for block in shown_events:
        fields = [line.split(":", 1)[0] for line in block.splitlines()]
        assert fields == ["event", "id", "data"], f"an event in the docs is not event/id/data: {block!r}"
    names = {re.search(r"^event: (.*)$", block, re.M).group(1) for block in shown_events}  # type: ignore[union-attr]
    happened = set(re.findall(r"^event: (.*)$", actual, re.M))
    assert names <= happened, f"the docs show events that did not happen: {names - happened}"


@pytest.mark.parametrize("sample", select("yaml"))
def test_yaml_sample_parses(sample: Sample) -> None:
    assert isinstance(yaml.safe_load(sample.code), dict)


@pytest.mark.parametrize("sample", select("json"))
def test_json_sample_parses(sample: Sample) -> None:
    # A message the docs show is one JSON object (tests of its kind check what the service does with it).
    assert isinstance(json.loads(sample.code), dict)


def node_samples() -> list[Any]:
    return [param for param in select("js") if "new WebSocket(" not in param.values[0].code]


def browser_samples() -> list[Any]:
    return [param for param in select("js") if "new WebSocket(" in param.values[0].code]


@pytest.mark.skipif(NODE is None, reason="node is needed for the Node samples")
@pytest.mark.parametrize("sample", node_samples())
async def test_node_sample_runs(sample: Sample, service: Service, workdir: Path) -> None:
    from tests.test_edge_node import CACHE, _sdk

    if 'from "openai"' in sample.code:
        await _sdk()  # the official SDK, installed once per machine
        script = CACHE / f"sample_{os.getpid()}_{sample.line}.mjs"
    else:
        script = workdir / "sample.mjs"
    # The samples write where they run: the script sits beside node_modules, the files land in workdir.
    code = service.localize(sample.code).replace('writeFileSync("', f'writeFileSync("{workdir}/')
    script.write_text(code)
    try:
        assert NODE is not None
        result = run([NODE, str(script)], workdir, service)
    finally:
        script.unlink()
    for written in re.findall(r'writeFileSync\("([^"]+)"', sample.code):
        assert (workdir / written).read_bytes()[:4] == b"RIFF"
    if "console.log" in sample.code:
        assert "golden" in result.stdout or "retriever" in result.stdout


# The names a browser sample leaves to the reader, and a promise that resolves when its turn completes.
BROWSER_PRELUDE = """
const host = location.host, key = "no-keys-on-this-server";
const received = [];
const handleEvent = (event) => received.push(event.type);
const play = (turnIndex, startSample, samples) => received.push("audio");
"""
# A sample that only shows how to receive gets the turn sent for it.
SEND_A_TURN = """
if (ws.readyState !== WebSocket.OPEN) await new Promise((ok) => ws.addEventListener("open", ok));
ws.send(JSON.stringify({ type: "config" }));
ws.send(JSON.stringify({ type: "text", text: "Is a golden retriever a good family dog?" }));
"""
BROWSER_EPILOGUE = """
const audio = await new Promise((ok, fail) => {
  let pieces = 0;
  ws.addEventListener("error", () => fail(new Error("socket error")));
  ws.addEventListener("message", ({ data }) => {
    if (typeof data !== "string") pieces += 1;
    else if (JSON.parse(data).type === "turn.completed") ok(pieces);
  });
});
ws.close();
return audio;
"""


@pytest.mark.browser
@pytest.mark.parametrize("sample", browser_samples())
def test_browser_sample_runs_in_chromium(sample: Sample, service: Service) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}; `make test` installs it (apt-get install chromium)")
    # The page is served over plain HTTP here, so wss:// becomes ws://; the rest is the sample as written.
    code = service.localize(sample.code).replace("wss://", "ws://")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(f"http://{service.http}/healthz")
            send = "" if '"text"' in sample.code else SEND_A_TURN
            pieces = page.evaluate(f"async () => {{ {BROWSER_PRELUDE}\n{code}\n{send}\n{BROWSER_EPILOGUE} }}")
        finally:
            browser.close()
    assert errors == []
    assert pieces > 0, "no audio frame reached the sample"
