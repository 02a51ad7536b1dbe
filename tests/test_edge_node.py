"""The official openai Node SDK, unmodified but for baseURL, against the edge: the docs' audio examples."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from service.audio import parse_wav
from tests.edge_fixtures import RunningEdge
from tests.events import expected

NODE, NPM = shutil.which("node"), shutil.which("npm")
SDK_VERSION = "7"
COMMAND_SECONDS = 120  # a first npm install on a slow network
# Installed once per machine; later runs reuse it.
CACHE = Path(os.environ.get("AUDIOCHAT_NODE_CACHE", Path.home() / ".cache" / "audiochat-tests" / "node"))

# The "generate audio" example of the docs, and its streaming sibling through the SDK's own helper
# (which needs a finish_reason the upstream often omits).
SCRIPT = r"""
const { writeFileSync } = require("node:fs");
const OpenAI = require(process.env.SDK);
const openai = new OpenAI({ baseURL: process.env.BASE_URL, apiKey: "sk-test", maxRetries: 0 });

async function main() {
  const response = await openai.chat.completions.create({
    model: process.env.MODEL,
    modalities: ["text", "audio"],
    audio: { voice: "alloy", format: "wav" },
    messages: [{ role: "user", content: "Is a golden retriever a good family dog?" }],
    store: true,
  });
  writeFileSync(process.env.OUT, Buffer.from(response.choices[0].message.audio.data, "base64"));

  const stream = openai.chat.completions.stream({
    model: process.env.MODEL,
    modalities: ["text", "audio"],
    audio: { voice: "alloy", format: "pcm16" },
    messages: [{ role: "user", content: "Is a golden retriever a good family dog?" }],
  });
  const final = await stream.finalChatCompletion();
  console.log(JSON.stringify({
    transcript: response.choices[0].message.audio.transcript,
    finish_reason: final.choices[0].finish_reason,
    stream_transcript: final.choices[0].message.audio?.transcript ?? null,
  }));
}
main().catch((error) => { console.error(error); process.exit(1); });
"""


async def _run(*command: str, env: dict[str, str] | None = None) -> str:
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
    )
    async with asyncio.timeout(COMMAND_SECONDS):
        stdout, stderr = await process.communicate()
    assert process.returncode == 0, f"{command[0]} failed: {stderr.decode()[-2000:]}"
    return stdout.decode()


async def _sdk() -> Path:
    package = CACHE / "node_modules" / "openai"
    if not await asyncio.to_thread((package / "package.json").exists):
        assert NPM is not None
        await asyncio.to_thread(CACHE.mkdir, parents=True, exist_ok=True)
        await _run(
            NPM,
            "install",
            "--no-audit",
            "--no-fund",
            "--silent",
            "--prefix",
            str(CACHE),
            f"openai@{SDK_VERSION}",
        )
    return package


@pytest.mark.skipif(NODE is None or NPM is None, reason="node and npm are needed for the Node SDK example")
async def test_node_example_writes_a_playable_wav(edge: RunningEdge, tmp_path: Path) -> None:
    assert NODE is not None
    sdk = await _sdk()
    script = tmp_path / "example.cjs"
    script.write_text(SCRIPT)
    out = tmp_path / "dog.wav"
    name = "audio_no_finish_reason"
    env = {
        **os.environ,
        "SDK": str(sdk),
        "BASE_URL": f"{edge.base_url}/v1",
        "MODEL": f"fixture/{name}",
        "OUT": str(out),
    }
    result = json.loads(await _run(NODE, str(script), env=env))
    want = expected(name)
    wav = out.read_bytes()
    info = parse_wav(wav)
    assert (info.sample_rate, info.channels, info.bits_per_sample) == (24000, 1, 16)
    samples = wav[info.data_offset : info.data_offset + info.data_length]
    assert hashlib.sha256(samples).hexdigest() == want["audio_sha256"]
    assert result["transcript"] == want["text"]
    # The capture has no finish_reason; the edge adds one, so the SDK's helper completes.
    assert result["finish_reason"] == "stop"
    assert result["stream_transcript"] == want["text"]
