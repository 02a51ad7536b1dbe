"""Tool calls through the official openai Node SDK, unmodified but for baseURL: not streamed, the
`.stream()` helper's final completion, and back with the results to a spoken continuation."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.edge_fixtures import RunningEdge
from tests.events import expected
from tests.test_edge_node import NODE, NPM, _run, _sdk
from tests.upstream_server import FixtureUpstream

SCRIPT = r"""
const OpenAI = require(process.env.SDK);
const openai = new OpenAI({ baseURL: process.env.BASE_URL, apiKey: "sk-test", maxRetries: 0 });
const tools = [{ type: "function", function: { name: "get_weather", description: "Weather now.",
  parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] } } }];
const messages = [{ role: "user", content: "What's the weather in Paris?" }];

async function main() {
  const whole = await openai.chat.completions.create({
    model: "fixture/tool_call", messages, tools, tool_choice: "required",
  });
  const stream = openai.chat.completions.stream({ model: "fixture/tool_call", messages, tools });
  const final = await stream.finalChatCompletion();
  const calling = whole.choices[0].message;
  const next = [...messages, calling,
    ...calling.tool_calls.map((call) => ({ role: "tool", tool_call_id: call.id, content: "21 C, clear" }))];
  const spoken = await openai.chat.completions.create({
    model: "toolcall/audio_no_finish_reason", messages: next, tools, stream: true,
    modalities: ["text", "audio"], audio: { voice: "alloy", format: "pcm16" },
  });
  let transcript = "";
  for await (const chunk of spoken) transcript += chunk.choices[0]?.delta?.audio?.transcript ?? "";
  console.log(JSON.stringify({
    whole: { finish: whole.choices[0].finish_reason, calls: calling.tool_calls },
    streamed: { finish: final.choices[0].finish_reason, calls: final.choices[0].message.tool_calls },
    transcript,
  }));
}
main().catch((error) => { console.error(error); process.exit(1); });
"""


@pytest.mark.skipif(NODE is None or NPM is None, reason="node and npm are needed for the Node SDK")
async def test_node_sdk_tool_calls_and_results(
    edge: RunningEdge, upstream: FixtureUpstream, tmp_path: Path
) -> None:
    assert NODE is not None
    sdk = await _sdk()
    script = tmp_path / "tools.cjs"
    script.write_text(SCRIPT)
    env = {**os.environ, "SDK": str(sdk), "BASE_URL": f"{edge.base_url}/v1"}
    result = json.loads(await _run(NODE, str(script), env=env))
    (want,) = expected("tool_call")["tool_calls"]
    wire = {
        "id": want["id"],
        "type": "function",
        "function": {"name": want["name"], "arguments": want["arguments"]},
    }
    assert result["whole"] == {"finish": "tool_calls", "calls": [wire]}
    assert result["streamed"]["finish"] == "tool_calls"
    (helper_call,) = result["streamed"]["calls"]
    assert {k: helper_call[k] for k in ("id", "type")} == {"id": want["id"], "type": "function"}
    assert (helper_call["function"]["name"], helper_call["function"]["arguments"]) == (
        want["name"],
        want["arguments"],
    )
    assert result["transcript"] == expected("audio_no_finish_reason")["text"]
    assert upstream.requests[-1]["messages"][-1] == {
        "role": "tool",
        "tool_call_id": want["id"],
        "content": "21 C, clear",
    }
    assert upstream.requests[0]["tool_choice"] == "required"
