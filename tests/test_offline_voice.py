"""The offline voice, served on a loopback port and spoken to with the real openai SDK and raw HTTP."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

import httpx
import numpy as np
import openai
import pytest
import pytest_asyncio
from openai import AsyncStream
from openai.types.chat import ChatCompletionChunk

from service.audio import parse_wav, wrap_pcm16_as_wav
from service.offline.answer import OFFLINE_NOTE, compose_answer
from service.offline.app import OfflineVoiceSettings
from service.offline.audio_ids import AudioIdStore
from service.offline.server import OfflineVoiceServer
from service.offline.speech import VOICES, espeak_variant, resample_22050_to_24000, synthesize

MODEL = "gpt-4o-audio-preview"
SPOKEN = {"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "pcm16"}}
QUESTION = "Is a golden retriever a good family dog?"
ANSWER = f"{OFFLINE_NOTE} You said: {QUESTION}"

Json = dict[str, Any]

# One server and one event loop for the module keep the file fast; lifecycle tests start their own.
module_loop = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def voice() -> AsyncIterator[OfflineVoiceServer]:
    async with OfflineVoiceServer() as server:
        yield server


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def sdk(voice: OfflineVoiceServer) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=voice.base_url, api_key="offline", max_retries=0)
    yield client
    await client.close()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def http(voice: OfflineVoiceServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=voice.base_url + "/") as client:
        yield client


def _request(text: str = QUESTION, **extra: Any) -> Json:
    return {"model": MODEL, "messages": [{"role": "user", "content": text}], **SPOKEN, **extra}


def _events(body: str) -> list[Json | str]:
    """Split an SSE body into its JSON payloads, keeping the literal [DONE]."""
    assert body.endswith("\n\n")
    events: list[Json | str] = []
    for block in body.split("\n\n")[:-1]:
        assert block.startswith("data: "), block
        payload = block.removeprefix("data: ")
        events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def _delta(event: Json | str) -> Json:
    assert isinstance(event, dict)
    delta: Json = event["choices"][0]["delta"]
    return delta


def _rms(pcm: bytes) -> float:
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    return float(np.sqrt(np.mean(samples**2)))


def _sdk_audio(delta: Any) -> Json:
    """The audio fields a chunk really carried (the SDK gives a dict or, in newer versions, a model)."""
    audio = getattr(delta, "audio", None)
    if audio is None or isinstance(audio, dict):
        return audio or {}
    fields: Json = audio.model_dump(exclude_unset=True)
    return fields


def _wav_b64(seconds: float, rate: int = 16_000) -> str:
    pcm = (np.sin(np.arange(int(seconds * rate)) * 0.1) * 8000).astype("<i2").tobytes()
    return base64.b64encode(wrap_pcm16_as_wav(pcm, rate)).decode()


async def _sdk_stream(
    sdk: openai.AsyncOpenAI, messages: list[Any], voice: str = "alloy", include_usage: bool = False
) -> AsyncStream[ChatCompletionChunk]:
    """Ask for a streamed spoken answer through the SDK, as the gateway does."""
    return await sdk.chat.completions.create(
        model=MODEL,
        messages=messages,
        modalities=["text", "audio"],
        audio={"voice": voice, "format": "pcm16"},
        stream=True,
        stream_options={"include_usage": include_usage},
    )


def _audio_part(data: str, audio_format: str = "wav") -> Json:
    return {"type": "input_audio", "input_audio": {"data": data, "format": audio_format}}


# Speech synthesis


def test_synthesize_speaks_24khz_speech() -> None:
    pcm = synthesize("Hello from the offline voice.", "alloy")
    assert len(pcm) % 2 == 0
    assert len(pcm) / 48_000 > 0.5
    assert _rms(pcm) > 500
    assert synthesize("   ") == b""


def test_each_openai_voice_speaks_with_its_own_espeak_voice() -> None:
    assert len(set(VOICES.values())) == len(VOICES), "two OpenAI voices would sound the same"
    spoken = {name: synthesize("Is a golden retriever a good family dog?", name) for name in VOICES}
    assert len(set(spoken.values())) == len(VOICES)
    assert all(len(pcm) > 24_000 for pcm in spoken.values())
    # Custom voice ids get a stable variant that is not any OpenAI voice's.
    custom = espeak_variant("voice_1234abcd")
    assert custom == espeak_variant("voice_1234abcd") and custom not in VOICES.values()
    assert espeak_variant("") == VOICES["alloy"]


def test_resampler_keeps_a_tone_and_its_frequency() -> None:
    rate_in = 22_050
    tone = (10_000 * np.sin(2 * np.pi * 1_000 * np.arange(rate_in) / rate_in)).astype(np.int16)
    out = resample_22050_to_24000(tone)
    assert len(out) == 24_000
    spectrum = np.abs(np.fft.rfft(out.astype(np.float64)))
    assert int(np.argmax(spectrum)) == 1_000  # one-second signal: bin index is the frequency in Hz
    expected = 10_000 * np.sin(2 * np.pi * 1_000 * np.arange(24_000) / 24_000)
    assert np.sqrt(np.mean((out[50:-50] - expected[50:-50]) ** 2)) < 5


# Streaming, through the real SDK


@module_loop
async def test_sdk_stream_carries_transcript_speech_id_and_expiry(sdk: openai.AsyncOpenAI) -> None:
    stream = await _sdk_stream(sdk, [{"role": "user", "content": QUESTION}], voice="coral")
    ids: list[str] = []
    transcript, pcm, chunk_ids = "", b"", set()
    expires_at = None
    async for chunk in stream:
        chunk_ids.add(chunk.id)
        audio = _sdk_audio(chunk.choices[0].delta)
        ids += [audio["id"]] if audio.get("id") else []
        transcript += audio.get("transcript") or ""
        pcm += base64.b64decode(audio.get("data") or "")
        expires_at = audio.get("expires_at") or expires_at
    assert len(chunk_ids) == 1
    assert next(iter(chunk_ids)).startswith("chatcmpl-")
    assert transcript == ANSWER
    assert len(ids) == 2
    assert ids[0] == ids[1]
    assert ids[0].startswith("audio_")
    assert expires_at is not None
    assert abs(expires_at - (time.time() + 3600)) < 5
    assert len(pcm) / 48_000 > 1.0
    assert _rms(pcm) > 500


@module_loop
async def test_sdk_usage_chunk_only_with_include_usage(sdk: openai.AsyncOpenAI) -> None:
    for include in (False, True):
        stream = await _sdk_stream(sdk, [{"role": "user", "content": QUESTION}], include_usage=include)
        chunks = [chunk async for chunk in stream]
        usages = [chunk.usage for chunk in chunks if chunk.usage is not None]
        if not include:
            assert usages == []
            continue
        assert len(usages) == 1
        assert chunks[-1].usage is usages[0]
        assert chunks[-1].choices == []
        usage = usages[0]
        details = usage.completion_tokens_details
        assert details is not None
        assert details.audio_tokens
        assert details.text_tokens
        assert usage.completion_tokens == details.audio_tokens + details.text_tokens
        assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
        assert usage.prompt_tokens > len(QUESTION) // 8


# Streaming, byte by byte


@module_loop
async def test_stream_has_the_shape_of_real_captures(http: httpx.AsyncClient) -> None:
    response = await http.post("chat/completions", json=_request(stream=True))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-request-id"].startswith("req_")
    events = _events(response.text)
    assert events[-1] == "[DONE]"
    chunks = [event for event in events[:-1] if isinstance(event, dict)]
    assert len(chunks) == len(events) - 1
    for chunk in chunks:
        assert chunk["object"] == "chat.completion.chunk"
        assert chunk["id"] == chunks[0]["id"]
        assert (chunk["created"], chunk["model"]) == (chunks[0]["created"], MODEL)
        assert chunk["system_fingerprint"].startswith("fp_")
        assert chunk["usage"] is None
        assert chunk["choices"][0]["finish_reason"] is None  # the usual real shape: no finish_reason at all

    deltas = [_delta(chunk) for chunk in chunks]
    assert deltas[0] == {"role": "assistant", "refusal": None}
    first_transcript, audio_id = deltas[1], deltas[1]["audio"]["id"]
    assert first_transcript == {"audio": {"transcript": "This", "id": audio_id}, "content": None}
    data_at = next(i for i, delta in enumerate(deltas) if "data" in delta.get("audio", {}))
    assert all(
        delta == {"audio": {"transcript": delta["audio"]["transcript"]}} for delta in deltas[2:data_at]
    )
    assert "".join(delta["audio"]["transcript"] for delta in deltas[1:data_at]) == ANSWER

    first_data = deltas[data_at]
    assert set(first_data) == {"audio", "role", "content", "refusal"}
    assert (first_data["role"], first_data["content"], first_data["refusal"]) == ("assistant", None, None)
    assert set(first_data["audio"]) == {"data", "id"}
    assert first_data["audio"]["id"] == audio_id
    pieces = [base64.b64decode(delta["audio"]["data"]) for delta in deltas[data_at:-1]]
    assert all(set(delta["audio"]) == {"data"} for delta in deltas[data_at + 1 : -1])
    assert all(len(piece) % 2 == 0 and 0 < len(piece) <= 9_600 for piece in pieces)
    assert all(len(piece) >= 4_800 for piece in pieces[:-1])  # 100 to 200 ms each but the last

    assert deltas[-1] == {"audio": {"expires_at": deltas[-1]["audio"]["expires_at"]}}
    assert deltas[-1]["audio"]["expires_at"] - chunks[0]["created"] in range(3599, 3602)
    assert _rms(b"".join(pieces)) > 500


@module_loop
@pytest.mark.parametrize("position", ["before_expires", "after_expires"])
async def test_stream_with_usage_and_optional_finish_chunk(
    position: Literal["before_expires", "after_expires"],
) -> None:
    async with (
        OfflineVoiceServer(OfflineVoiceSettings(finish_reason_chunk=position)) as server,
        httpx.AsyncClient() as client,
    ):
        request = _request(stream=True, stream_options={"include_usage": True})
        response = await client.post(server.base_url + "/chat/completions", json=request)
    chunks = _events(response.text)
    assert chunks[-1] == "[DONE]"
    finish, expires, usage_chunk = chunks[-4], chunks[-3], chunks[-2]
    if position == "after_expires":
        finish, expires = expires, finish
    assert isinstance(finish, dict)
    assert isinstance(expires, dict)
    assert isinstance(usage_chunk, dict)
    assert finish["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop"}
    assert set(_delta(expires)["audio"]) == {"expires_at"}
    assert usage_chunk["choices"] == []
    usage = usage_chunk["usage"]
    completion = usage["completion_tokens_details"]
    assert usage["completion_tokens"] == completion["audio_tokens"] + completion["text_tokens"]
    prompt = usage["prompt_tokens_details"]
    assert usage["prompt_tokens"] == prompt["audio_tokens"] + prompt["text_tokens"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


@module_loop
async def test_streamed_audio_equals_the_non_streamed_wav(http: httpx.AsyncClient) -> None:
    streamed = _events((await http.post("chat/completions", json=_request(stream=True))).text)
    pcm = b"".join(
        base64.b64decode(_delta(chunk)["audio"]["data"])
        for chunk in streamed[:-1]
        if "data" in _delta(chunk).get("audio", {})
    )
    wav_request = _request()
    wav_request["audio"] = {"voice": "alloy", "format": "wav"}
    response = await http.post("chat/completions", json=wav_request)
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion"
    choice = body["choices"][0]
    assert choice["finish_reason"] == "stop"
    message = choice["message"]
    assert (message["role"], message["content"], message["refusal"]) == ("assistant", None, None)
    audio = message["audio"]
    assert audio["data"].startswith("UklGR")
    assert audio["transcript"] == ANSWER
    assert audio["id"].startswith("audio_")
    wav = base64.b64decode(audio["data"])
    info = parse_wav(wav)
    assert (info.sample_rate, info.channels, info.bits_per_sample, info.data_offset) == (24_000, 1, 16, 44)
    assert wav[44:] == pcm


@module_loop
async def test_non_streamed_pcm16_is_raw_samples(http: httpx.AsyncClient) -> None:
    response = await http.post("chat/completions", json=_request("Say something short."))
    pcm = base64.b64decode(response.json()["choices"][0]["message"]["audio"]["data"])
    assert not pcm.startswith(b"RIFF")
    assert len(pcm) / 48_000 > 0.5
    assert _rms(pcm) > 500


# Input audio and multi-turn


@module_loop
async def test_audio_input_answer_names_its_duration(sdk: openai.AsyncOpenAI) -> None:
    speech = synthesize("Please tell me what you heard in this recording.", "echo")
    seconds = len(speech) / 48_000
    wav = base64.b64encode(wrap_pcm16_as_wav(speech, 24_000)).decode()
    stream = await _sdk_stream(sdk, [{"role": "user", "content": [_audio_part(wav)]}], include_usage=True)
    transcript = ""
    async for chunk in stream:
        if chunk.choices:
            transcript += _sdk_audio(chunk.choices[0].delta).get("transcript") or ""
        elif chunk.usage is not None and chunk.usage.prompt_tokens_details is not None:
            assert chunk.usage.prompt_tokens_details.audio_tokens == int(np.ceil(seconds * 10))
    assert f"I heard {seconds:.1f} seconds of audio" in transcript


@module_loop
async def test_mp3_input_and_text_only_output(http: httpx.AsyncClient) -> None:
    frame = bytes([0xFF, 0xFB, 0x90, 0x00]) + bytes(413)  # MPEG-1 Layer III, 128 kbit/s, 44.1 kHz
    mp3 = base64.b64encode(frame * 100).decode()
    content = [{"type": "text", "text": "What is this?"}, _audio_part(mp3, "mp3")]
    request = {"model": MODEL, "messages": [{"role": "user", "content": content}], "modalities": ["text"]}
    response = await http.post("chat/completions", json={**request, "stream": True})
    events = _events(response.text)
    assert _delta(events[0]) == {"role": "assistant", "content": "", "refusal": None}
    text = "".join(_delta(event).get("content", "") for event in events[1:-2])
    heard = "I heard 2.6 seconds of audio, but offline I cannot tell what was said."
    assert text == f"{OFFLINE_NOTE} {heard} You said: What is this?"
    assert isinstance(events[-2], dict)
    assert events[-2]["choices"][0]["finish_reason"] == "stop"
    assert all("audio" not in _delta(event) for event in events[:-1])
    plain = (await http.post("chat/completions", json=request)).json()
    assert plain["choices"][0]["message"]["content"] == text


@module_loop
async def test_multi_turn_refers_to_the_issued_audio_id(http: httpx.AsyncClient) -> None:
    first = (await http.post("chat/completions", json=_request())).json()
    audio_id = first["choices"][0]["message"]["audio"]["id"]
    history = [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "audio": {"id": audio_id}},
        {"role": "user", "content": "And a cat?"},
    ]
    second = await http.post("chat/completions", json={**_request(), "messages": history})
    assert second.status_code == 200
    # The note is on every answer, not only the first: a later turn is as offline as the first.
    assert (
        second.json()["choices"][0]["message"]["audio"]["transcript"]
        == f"{OFFLINE_NOTE} You said: And a cat?"
    )


@pytest.mark.parametrize(
    ("question", "echoed"),
    [
        (
            "I live in a small apartment in a big city with two kids and a cat and I work long hours "
            "every day so is a golden retriever a good family dog for us?",
            "You said: I live in a small apartment in a big city with two kids and a cat and I work long "
            "hours every day, and 11 more words.",
        ),
        (
            "We have a garden, two cats, a rabbit and three children, and we travel a lot in summer, so "
            "which dog breed would suit a family like ours best?",
            "You said: We have a garden, two cats, a rabbit and three children, and we travel a lot in "
            "summer, and 11 more words.",
        ),
        (
            "What should I cook tonight with rice? I have two eggs, spinach, half an onion and a bit of "
            "cheese in the fridge and twenty minutes.",
            "You said: What should I cook tonight with rice? I have two eggs, spinach, and 14 more words.",
        ),
    ],
)
def test_a_long_question_is_cut_at_a_phrase_boundary(question: str, echoed: str) -> None:
    answer = compose_answer(question, None)
    assert answer == f"{OFFLINE_NOTE} {echoed}"


def test_audio_ids_expire_and_stay_bounded() -> None:
    now = [1000.0]
    store = AudioIdStore(ttl_seconds=60, max_ids=3, clock=lambda: now[0])
    first, expires = store.issue()
    assert expires == 1060
    assert store.is_valid(first)
    now[0] = 1060.0
    assert not store.is_valid(first)
    ids = [store.issue()[0] for _ in range(4)]
    assert len(store) == 3
    assert not store.is_valid(ids[0])
    assert all(store.is_valid(i) for i in ids[1:])
    assert not store.is_valid("audio_never_issued")


# Errors


async def _error(http: httpx.AsyncClient, request: Any, status: int = 400) -> Json:
    response = await http.post("chat/completions", json=request)
    assert response.status_code == status
    assert response.headers["x-request-id"].startswith("req_")
    body: Json = response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    error: Json = body["error"]
    return error


@module_loop
@pytest.mark.parametrize("name", ["bogusvoice", "Alloy", "nova2"])
async def test_an_unknown_voice_is_refused_like_openai(
    http: httpx.AsyncClient, sdk: openai.AsyncOpenAI, name: str
) -> None:
    request = _request(stream=True)
    request["audio"] = {"voice": name, "format": "pcm16"}
    error = await _error(http, request)
    listed = ", ".join(f"'{name}'" for name in list(VOICES)[:-1]) + f", and '{list(VOICES)[-1]}'"
    assert error["message"] == f"Invalid value: '{name}'. Supported values are: {listed}."
    assert (error["type"], error["param"], error["code"]) == (
        "invalid_request_error",
        "audio.voice",
        "invalid_value",
    )
    with pytest.raises(openai.BadRequestError, match="Invalid value"):
        await sdk.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Hi"}],
            modalities=["text", "audio"],
            audio={"voice": name, "format": "pcm16"},
            stream=True,
        )


@module_loop
async def test_streaming_wav_is_refused_like_openai(http: httpx.AsyncClient, sdk: openai.AsyncOpenAI) -> None:
    request = _request(stream=True)
    request["audio"] = {"voice": "alloy", "format": "wav"}
    error = await _error(http, request)
    assert error["message"] == (
        "Unsupported value: 'audio.format' does not support 'wav' when stream=true. "
        "Supported values are: 'pcm16'."
    )
    assert (error["type"], error["param"]) == ("invalid_request_error", "audio.format")
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            modalities=["text", "audio"],
            audio={"voice": "alloy", "format": "wav"},
            stream=True,
        )
    assert caught.value.status_code == 400
    assert (caught.value.request_id or "").startswith("req_")


@module_loop
async def test_bad_input_audio_is_unsupported_format(http: httpx.AsyncClient) -> None:
    not_wav = base64.b64encode(b"this is not a wav file at all").decode()
    content = [{"type": "text", "text": "hi"}, _audio_part(not_wav)]
    error = await _error(http, {**_request(), "messages": [{"role": "user", "content": content}]})
    assert error["code"] == "unsupported_format"
    assert error["param"] == "messages[0].content[1].input_audio.data"
    bad_base64 = {**_request(), "messages": [{"role": "user", "content": [_audio_part("%%%")]}]}
    assert (await _error(http, bad_base64))["code"] == "unsupported_format"
    ogg = {**_request(), "messages": [{"role": "user", "content": [_audio_part(_wav_b64(1), "ogg")]}]}
    assert (await _error(http, ogg))["code"] == "invalid_value"


@module_loop
async def test_unknown_audio_id_is_audio_not_found(http: httpx.AsyncClient) -> None:
    history = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "audio": {"id": "audio_67153951b364819093d6a4aac6e0767a"}},
        {"role": "user", "content": "again"},
    ]
    error = await _error(http, {**_request(), "messages": history})
    assert (error["code"], error["param"]) == ("audio_not_found", "content.messages[1].audio.id")


@module_loop
@pytest.mark.parametrize(
    ("request_body", "code"),
    [
        ({"model": MODEL, **SPOKEN}, "missing_required_parameter"),
        ({**_request(), "audio": None}, "missing_required_parameter"),
        ({**_request(), "modalities": ["text"]}, "invalid_value"),  # neither audio in nor audio out
        ({**_request(), "audio": {"voice": "alloy", "format": "mp3"}}, "unsupported_value"),
        ({**_request(), "stream_options": {"include_usage": True}}, "invalid_value"),
        ({**_request(), "messages": [{"role": "robot", "content": "hi"}]}, "invalid_value"),
    ],
)
async def test_invalid_requests_get_openai_errors(
    http: httpx.AsyncClient, request_body: Json, code: str
) -> None:
    assert (await _error(http, request_body))["code"] == code


@module_loop
async def test_non_json_and_unknown_paths(http: httpx.AsyncClient) -> None:
    response = await http.post("chat/completions", content=b"{not json")
    assert response.status_code == 400
    assert "could not parse the JSON body" in response.json()["error"]["message"]
    missing = await http.post("responses", json={})
    assert missing.status_code == 404
    assert missing.headers["x-request-id"].startswith("req_")
    assert missing.json()["error"]["message"] == "Invalid URL (POST /v1/responses)"


# Pacing, disconnects and lifecycle


@module_loop
async def test_paced_stream_stops_when_the_client_leaves() -> None:
    tasks_before = asyncio.all_tasks()
    server = OfflineVoiceServer(OfflineVoiceSettings(realtime_factor=4.0))
    base_url = await server.start()
    long_text = "This sentence is long enough to take several seconds to speak aloud. " * 3
    async with httpx.AsyncClient() as client:
        request = _request(long_text, stream=True)
        async with client.stream("POST", base_url + "/chat/completions", json=request) as response:
            data_pieces = 0
            async for line in response.aiter_lines():
                data_pieces += '"data":"' in line
                if data_pieces == 3:
                    break
    # Unpaced, the whole answer would have been written to the socket by now and counted completed.
    for _ in range(100):
        if server.stats.streams_abandoned:
            break
        await asyncio.sleep(0.01)
    assert (server.stats.streams_abandoned, server.stats.streams_completed) == (1, 0)
    await server.stop()
    assert asyncio.all_tasks() <= tasks_before


@module_loop
async def test_server_starts_and_stops_clean() -> None:
    tasks_before = asyncio.all_tasks()
    async with OfflineVoiceServer() as server:
        assert server.base_url.startswith("http://127.0.0.1:")
        assert server.base_url.endswith("/v1")
        port = int(server.base_url.rsplit(":", 1)[1].split("/")[0])
        assert port > 0
    assert server.base_url == ""
    assert asyncio.all_tasks() <= tasks_before
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient() as client:
            await client.post(f"http://127.0.0.1:{port}/v1/chat/completions", json={})
