"""POST /v1/chat/completions driven by the real openai Python SDK, with the edge as its base_url."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from service.audio import parse_wav, wrap_pcm16_as_wav
from tests.edge_fixtures import RunningEdge, sdk_audio
from tests.events import expected
from tests.upstream_server import FixtureUpstream

QUESTION: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Is a golden retriever a good family dog?"}
]


def sdk(edge: RunningEdge, api_key: str = "sk-anything") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{edge.base_url}/v1", api_key=api_key, max_retries=0)


@pytest.mark.parametrize("name", ["audio_no_finish_reason", "audio_finish_before_expires"])
async def test_streaming_audio_as_the_python_example_does(edge: RunningEdge, name: str) -> None:
    client = sdk(edge)
    stream = await client.chat.completions.create(
        model=f"fixture/{name}",
        modalities=["text", "audio"],
        audio={"voice": "alloy", "format": "pcm16"},
        messages=QUESTION,
        stream=True,
        stream_options={"include_usage": True},
    )
    transcript, pcm, ids, expires_at = "", bytearray(), [], 0
    finish_reasons, usage = [], None
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            audio = sdk_audio(choice.delta)
            transcript += audio.get("transcript") or ""
            piece = base64.b64decode(audio.get("data") or "")
            assert len(piece) % 2 == 0, "every audio piece holds whole samples"
            pcm += piece
            ids += [audio["id"]] if audio.get("id") else []
            expires_at = audio.get("expires_at") or expires_at
            if choice.finish_reason:
                finish_reasons.append(choice.finish_reason)
    await client.close()
    want = expected(name)
    assert transcript == want["text"]
    assert hashlib.sha256(pcm).hexdigest() == want["audio_sha256"]
    assert ids == [want["audio_id"]] and expires_at == want["expires_at"]
    assert finish_reasons == ["stop"], "every answer ends with exactly one finish_reason"
    assert usage is not None and usage.completion_tokens == want["usage"]["completion_tokens"]
    # Saved as the example does, it is a playable WAV of the same samples.
    wav = wrap_pcm16_as_wav(bytes(pcm))
    info = parse_wav(wav)
    assert (info.sample_rate, info.channels, info.data_length) == (24000, 1, len(pcm))


async def test_non_streaming_wav_answer_as_the_node_example_does(edge: RunningEdge) -> None:
    client = sdk(edge)
    completion = await client.chat.completions.create(
        model="fixture/audio_no_finish_reason",
        modalities=["text", "audio"],
        audio={"voice": "alloy", "format": "wav"},
        messages=QUESTION,
    )
    await client.close()
    want = expected("audio_no_finish_reason")
    message = completion.choices[0].message
    assert completion.choices[0].finish_reason == "stop"
    assert message.audio is not None and message.audio.id == want["audio_id"]
    assert message.audio.transcript == want["text"] and message.audio.expires_at == want["expires_at"]
    wav = base64.b64decode(message.audio.data)
    info = parse_wav(wav)
    assert (info.sample_rate, info.channels, info.bits_per_sample) == (24000, 1, 16)
    samples = wav[info.data_offset : info.data_offset + info.data_length]
    assert hashlib.sha256(samples).hexdigest() == want["audio_sha256"]
    assert completion.usage is not None and completion.usage.prompt_tokens == want["usage"]["prompt_tokens"]


async def test_non_streaming_pcm16_and_text_answers(edge: RunningEdge) -> None:
    client = sdk(edge)
    spoken = await client.chat.completions.create(
        model="fixture/audio_finish_before_expires",
        modalities=["text", "audio"],
        audio={"voice": "alloy", "format": "pcm16"},
        messages=QUESTION,
    )
    text = await client.chat.completions.create(model="fixture/text_only", messages=QUESTION)
    await client.close()
    assert spoken.choices[0].message.audio is not None
    pcm = base64.b64decode(spoken.choices[0].message.audio.data)
    assert hashlib.sha256(pcm).hexdigest() == expected("audio_finish_before_expires")["audio_sha256"]
    assert text.choices[0].message.content == expected("text_only")["text"]
    assert text.choices[0].message.audio is None


async def test_streamed_text_answer(edge: RunningEdge) -> None:
    client = sdk(edge)
    stream = await client.chat.completions.create(
        model="fixture/text_only",
        messages=QUESTION,
        stream=True,
    )
    pieces = [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
    await client.close()
    assert "".join(pieces) == expected("text_only")["text"]


async def test_audio_input_and_assistant_audio_id_reach_the_upstream(
    edge: RunningEdge, upstream: FixtureUpstream
) -> None:
    wav = wrap_pcm16_as_wav(bytes(range(256)) * 40, 16000)
    data = base64.b64encode(wav).decode()
    client = sdk(edge)
    completion = await client.chat.completions.create(
        model="fixture/text_only",
        modalities=["text"],
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "audio": {"id": "audio_abc"}},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "And this?"},
                    {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}},
                ],
            },
        ],
    )
    await client.close()
    assert completion.choices[0].message.content == expected("text_only")["text"]
    sent = upstream.requests[-1]
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
    assert sent["messages"][2] == {"role": "assistant", "audio": {"id": "audio_abc"}}
    parts = sent["messages"][3]["content"]
    assert {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}} in parts


@pytest.mark.parametrize(
    ("request_", "error", "status"),
    [
        (
            {"model": "m", "audio": {"voice": "alloy", "format": "m4a"}, "stream": True},
            openai.BadRequestError,
            400,
        ),
        ({"model": "m", "audio": {"voice": "alloy", "format": "ogg"}}, openai.BadRequestError, 400),
        ({"model": "status/429/rate_limit_exceeded"}, openai.RateLimitError, 429),
        ({"model": "status/500/server_error"}, openai.APIStatusError, 502),
        ({"model": "status/400/unsupported_format"}, openai.BadRequestError, 400),
    ],
)
async def test_errors_in_openai_shape(
    edge: RunningEdge, request_: dict[str, Any], error: type[openai.APIStatusError], status: int
) -> None:
    client = sdk(edge)
    audio = request_.pop("audio", {"voice": "alloy", "format": "pcm16"})
    with pytest.raises(error) as raised:
        await client.chat.completions.create(
            modalities=["text", "audio"],
            audio=audio,
            messages=QUESTION,
            **request_,
        )
    assert raised.value.status_code == status
    assert isinstance(raised.value.body, dict) and raised.value.body["message"]
    ok = await client.chat.completions.create(model="fixture/text_only", messages=QUESTION)
    assert ok.choices[0].message.content
    await client.close()


async def test_an_error_mid_stream_raises_in_the_sdk(edge: RunningEdge) -> None:
    client = sdk(edge)
    stream = await client.chat.completions.create(
        model="fixture/audio_midstream_error",
        modalities=["text", "audio"],
        audio={"voice": "alloy", "format": "pcm16"},
        messages=QUESTION,
        stream=True,
    )
    with pytest.raises(openai.APIError, match=r"server|fail|error"):
        async for _ in stream:
            pass
    await client.close()
