"""The push-to-talk page, unchanged, on the Realtime upstream: `audiochat serve` with
AUDIOCHAT_UPSTREAM=offline-realtime, so every turn is a Realtime response of the offline voice, and a
barge-in is a `response.cancel` plus a `conversation.item.truncate` at what the page played."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.test_web_page import (
    LONG_QUESTION,
    SAMPLES_PER_MS,
    browser,
    counters,
    free_port,
    microphone_wav,
    open_page,
    serving,
    type_turn,
    wait_played_all,
    wait_turn,
)

pytestmark = pytest.mark.browser
__all__ = ["browser", "microphone_wav"]  # the browser fixture and what its microphone says


@pytest.fixture(scope="module")
def realtime_port() -> Iterator[int]:
    port = free_port()
    with serving(port, AUDIOCHAT_UPSTREAM="offline-realtime") as serve:
        assert serve.log_lines[-1]["upstream"] == "offline-realtime"
        yield port


def test_barge_in_then_push_to_talk(browser: Any, realtime_port: int) -> None:
    with open_page(browser, realtime_port) as page:
        type_turn(page, LONG_QUESTION)
        page.wait_for_function(
            "() => (window.audiochatTest.turns[1]?.playedSamples ?? 0) > 12000", timeout=20_000
        )
        page.locator("#text").blur()  # outside the text box, space talks
        page.keyboard.down("Space")
        page.wait_for_function("() => window.audiochatTest.lastStop !== null", timeout=5_000)
        stop = counters(page)["lastStop"]
        assert stop["playedSamples"] - counters(page)["pressed"]["playedSamples"] <= 100 * SAMPLES_PER_MS
        interrupted = wait_turn(page, 1, reason="interrupted")
        assert interrupted["playedMs"] == stop["playedMs"], "the service kept the player's own count"
        page.wait_for_timeout(1200)  # the microphone speaks while space is held
        page.keyboard.up("Space")
        follow_up = wait_played_all(page, 2)
        assert (
            follow_up["receivedSamples"] == follow_up["playedSamples"] == follow_up["audioSamples"] > 24_000
        )
        heard = page.locator(".bubble.assistant .text").nth(1).inner_text()
        assert "seconds of audio" in heard, "the recording reached the Realtime session as input audio"
