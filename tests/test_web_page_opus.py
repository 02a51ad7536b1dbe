"""The web page's Opus option in a real headless Chromium: the answer arrives as Ogg Opus (about a tenth of
pcm16's bytes), is decoded by WebCodecs and played through the same player, every sample counted."""

from __future__ import annotations

from typing import Any

from tests.test_web_page import (  # noqa: F401 (fixtures)
    browser,
    microphone_wav,
    open_page,
    server_port,
    type_turn,
    wait_played_all,
)

# An Opus decoder without the Ogg granule position (WebCodecs sees packets only) may add up to one frame.
OPUS_FRAME_SAMPLES = 480


def test_opus_answers_play_every_sample(browser: Any, server_port: int) -> None:  # noqa: F811 (fixtures)
    with open_page(browser, server_port) as page:
        page.click("#settings-toggle")
        page.check("#opus-answers")
        page.click("#settings button[type=submit]")
        page.wait_for_function("window.audiochatTest.conversations >= 2", timeout=15_000)
        type_turn(page, "Is a golden retriever a good family dog?")
        turn = wait_played_all(page, 1)
        assert turn["encoding"] == "opus"
        assert turn["audioSamples"] > 24_000, "a spoken answer of more than a second"
        assert 0 <= turn["receivedSamples"] - turn["audioSamples"] <= OPUS_FRAME_SAMPLES
        assert turn["playedSamples"] >= turn["audioSamples"]
