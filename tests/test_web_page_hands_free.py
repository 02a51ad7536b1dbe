"""Hands-free on the web page in a real headless Chromium: the fake microphone talks, the service hears it.

Each test gives Chromium's fake microphone its own recording (offline-voice speech with pauses of known
length, played once), turns hands-free on and never touches the talk button.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from service.audio import wrap_pcm16_as_wav
from tests.speech import silence, utterance
from tests.test_web_page import (
    ARTIFACTS,
    CHROMIUM,
    Page,
    chromium_args,
    counters,
    free_port,
    open_page,
    serving,
    sync_api,
    wait_played_all,
    wait_turn,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

QUESTION = "Is a golden retriever a good family dog?"
FOLLOW_UP = "And how much exercise does it need every day?"


@contextmanager
def browser_hearing(path: Path, pcm16: bytes) -> Iterator[Any]:
    """Chromium whose fake microphone plays `pcm16` once (24 kHz), then silence."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}; `make test` installs it (apt-get install chromium)")
    path.write_bytes(wrap_pcm16_as_wav(pcm16, 24_000))
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=chromium_args(f"{path}%noloop"),
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def server_port() -> Iterator[int]:
    port = free_port()
    with serving(port):
        yield port


def hands_free_on(page: Page) -> None:
    page.locator("#hands-free").check()
    page.wait_for_function("() => window.audiochatTest.handsFree && window.audiochatTest.conversations >= 2")
    assert page.locator("#talk").is_disabled()


def test_speech_pause_speech_gets_two_answers_without_a_button(server_port: int, tmp_path: Path) -> None:
    # The first answer (about 6 s at real time) ends within the 13 s pause even on a loaded machine, so
    # neither cuts the other.
    mic = silence(1500) + utterance(QUESTION) + silence(13_000) + utterance(FOLLOW_UP, "nova") + silence(8000)
    with browser_hearing(tmp_path / "mic.wav", mic) as browser, open_page(browser, server_port) as page:
        hands_free_on(page)
        page.wait_for_function("() => window.audiochatTest.voiceState === 'speaking'", timeout=15_000)
        assert page.locator("#state-label").inner_text() == "you're speaking"
        # The first hands-free turn also starts the detector's model in the server: allow for a cold start.
        page.wait_for_function("() => window.audiochatTest.voiceState === 'answering'", timeout=30_000)
        first = wait_played_all(page, 1, timeout_ms=30_000)
        second = wait_played_all(page, 2, timeout_ms=30_000)
        state = counters(page)
        assert [event["type"] for event in state["speech"]] == ["speech.started", "speech.stopped"] * 2
        assert first["reason"] == second["reason"] == "stop"
        assert first["playedSamples"] == first["audioSamples"] > 24_000
        assert state["peakLevel"] > 0.01, "the level meter saw the voice"
        # The offline voice says how much audio it heard: each utterance with its padding, not the pauses.
        answers = page.locator(".bubble.assistant .text").all_inner_texts()
        assert len(answers) == 2 and all("seconds of audio" in answer for answer in answers)
        assert page.locator(".bubble.user").count() == 2
        page.wait_for_function("() => window.audiochatTest.voiceState === 'listening'", timeout=5_000)


def test_talking_over_the_answer_interrupts_it(server_port: int, tmp_path: Path) -> None:
    # The second sentence starts 2.5 s after the first ends: the first answer is playing by then.
    mic = silence(1500) + utterance(QUESTION) + silence(2500) + utterance(FOLLOW_UP, "nova") + silence(8000)
    with browser_hearing(tmp_path / "mic.wav", mic) as browser, open_page(browser, server_port) as page:
        hands_free_on(page)
        page.wait_for_function(
            "() => (window.audiochatTest.turns[1]?.playedSamples ?? 0) > 0", timeout=20_000
        )
        page.wait_for_function("() => window.audiochatTest.lastStop !== null", timeout=15_000)
        stop = counters(page)["lastStop"]
        assert stop["turnIndex"] == 1
        page.wait_for_timeout(300)
        assert counters(page)["turns"]["1"]["playedSamples"] == stop["playedSamples"], (
            "silence after the stop"
        )
        interrupted = wait_turn(page, 1, reason="interrupted")
        # The service stopped the answer on its own estimate of what was heard (time since its first audio);
        # the page's count of played samples, which it then reports, is the truth it should be near.
        assert abs(interrupted["playedMs"] - stop["playedMs"]) < 1000
        assert page.locator(".bubble.assistant .cut").count() == 1
        follow_up = wait_played_all(page, 2, timeout_ms=30_000)
        assert follow_up["playedSamples"] == follow_up["audioSamples"] > 0
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "web-page-hands-free.png"))
