"""Chromium plays what the gateway encodes: each answer format through Web Audio's decoder, and the WebM
Opus answer appended delta by delta to a Media Source buffer, the way a page plays it while it streams."""

from __future__ import annotations

import base64
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.audio.encode import Encoder, OutputEncoding
from tests.audio_files import RATE, speech

sync_api = pytest.importorskip("playwright.sync_api")

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

DECODE = """async ([b64]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const context = new OfflineAudioContext(1, 1, 24000);
  const buffer = await context.decodeAudioData(bytes.buffer);
  return buffer.duration;
}"""

MEDIA_SOURCE = """async ([pieces]) => {
  const type = 'audio/webm; codecs="opus"';
  if (!MediaSource.isTypeSupported(type)) return -1;
  const source = new MediaSource();
  const audio = document.createElement("audio");
  audio.src = URL.createObjectURL(source);
  await new Promise((resolve) => source.addEventListener("sourceopen", resolve, { once: true }));
  const buffer = source.addSourceBuffer(type);
  for (const b64 of pieces) {
    buffer.appendBuffer(Uint8Array.from(atob(b64), (c) => c.charCodeAt(0)));
    await new Promise((resolve, reject) => {
      buffer.addEventListener("updateend", resolve, { once: true });
      buffer.addEventListener("error", () => reject(new Error("append failed")), { once: true });
    });
  }
  return buffer.buffered.length ? buffer.buffered.end(0) : 0;
}"""


@pytest.fixture(scope="module")
def page() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}; `make test` installs it (apt-get install chromium)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-first-run"])
        page = browser.new_page()
        page.set_content("<!doctype html><title>codecs</title>")
        yield page
        browser.close()


def deltas(encoding: OutputEncoding) -> list[bytes]:
    """The answer as the turn's AudioDeltas carry it: header, then one piece per 100 ms of pcm, then flush."""
    pcm = speech()
    encoder = Encoder(encoding)
    pieces = [encoder.header()]
    pieces += [encoder.encode(pcm[start : start + 4800]) for start in range(0, len(pcm), 4800)]
    pieces.append(encoder.flush())
    return [piece for piece in pieces if piece]


@pytest.mark.parametrize("encoding", ["opus", "webm_opus", "aac", "mp3", "flac", "wav"])
def test_chromium_decodes_each_answer_format(page: Any, encoding: OutputEncoding) -> None:
    data = b"".join(deltas(encoding))
    duration = page.evaluate(DECODE, [base64.b64encode(data).decode()])
    seconds = len(speech()) / 2 / RATE
    assert duration == pytest.approx(seconds, abs=0.1), encoding


def test_chromium_streams_webm_opus_through_media_source(page: Any) -> None:
    pieces = deltas("webm_opus")
    assert len(pieces) > 10, "many deltas, appended one at a time"
    buffered = page.evaluate(MEDIA_SOURCE, [[base64.b64encode(piece).decode() for piece in pieces]])
    assert buffered == pytest.approx(len(speech()) / 2 / RATE, abs=0.05)
