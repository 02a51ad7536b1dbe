"""The push-to-talk page in a real headless Chromium, against a real `audiochat serve` on the offline voice.

Chromium's fake microphone plays a WAV of offline-voice speech, so a person talking is real audio end to
end. The offline voice is paced at real time so that an answer is still streaming when the test talks over it.
"""

from __future__ import annotations

import shutil
import socket
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from service.audio import wrap_pcm16_as_wav
from service.offline.speech import synthesize
from tests.processes import ServeProcess, audiochat_serve

sync_api = pytest.importorskip("playwright.sync_api")

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).parent / "artifacts"
SAMPLES_PER_MS = 24
LONG_QUESTION = (
    "Tell me about golden retrievers, their temper, their coat, how much exercise they need, "
    "how they get along with children and other pets, and what they like to eat."
)
Page = Any  # playwright.sync_api.Page


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_ready(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        assert time.monotonic() < deadline, "the edge did not become ready"
        time.sleep(0.1)


@contextmanager
def serving(port: int, **environ: str) -> Iterator[ServeProcess]:
    """`audiochat serve` with its edge on `port`, the offline voice speaking at real time; `environ`: more
    settings (AUDIOCHAT_UPSTREAM=offline-realtime...)."""
    environment = {"AUDIOCHAT_HTTP_PORT": str(port), "AUDIOCHAT_OFFLINE_REALTIME_FACTOR": "1", **environ}
    with audiochat_serve(env=environment) as serve:
        serve.wait_for("audiochat ready")
        wait_ready(port)
        yield serve


@pytest.fixture(scope="module")
def microphone_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What the fake microphone says: real speech from the offline voice."""
    path = tmp_path_factory.mktemp("mic") / "question.wav"
    pcm = synthesize("Is a golden retriever a good family dog? I would love to know more about them.")
    path.write_bytes(wrap_pcm16_as_wav(pcm, 24_000))
    return path


def chromium_args(microphone: str) -> list[str]:
    """Headless Chromium with a fake microphone playing the WAV file `microphone` (`path%noloop`: once)."""
    return [
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={microphone}",
        "--autoplay-policy=no-user-gesture-required",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
    ]


@pytest.fixture(scope="module")
def browser(microphone_wav: Path) -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}; `make test` installs it (apt-get install chromium)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=chromium_args(str(microphone_wav)),
        )
        yield browser
        browser.close()


@contextmanager
def open_page(browser: Any, port: int) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 420, "height": 820}, device_scale_factor=2)
    context.grant_permissions(["microphone"])
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"http://127.0.0.1:{port}/")
    page.wait_for_function("window.audiochatTest && window.audiochatTest.connected", timeout=15_000)
    yield page
    assert errors == [], f"the page threw: {errors}"
    context.close()


def counters(page: Page) -> dict[str, Any]:
    result: dict[str, Any] = page.evaluate("JSON.parse(JSON.stringify(window.audiochatTest))")
    return result


def wait_turn(page: Page, index: int, reason: str | None = None, timeout_ms: int = 30_000) -> dict[str, Any]:
    """Wait until turn `index` completed; check its reason when given."""
    page.wait_for_function(
        f"""() => {{
            const turn = window.audiochatTest.turns[{index}];
            return turn && turn.reason !== null;
        }}""",
        timeout=timeout_ms,
    )
    turn: dict[str, Any] = counters(page)["turns"][str(index)]
    if reason is not None:
        assert turn["reason"] == reason
    return turn


def wait_played_all(page: Page, index: int, timeout_ms: int = 30_000) -> dict[str, Any]:
    page.wait_for_function(
        f"""() => {{
            const turn = window.audiochatTest.turns[{index}];
            return turn && turn.reason === "stop" && turn.playedSamples >= turn.audioSamples;
        }}""",
        timeout=timeout_ms,
    )
    turn: dict[str, Any] = counters(page)["turns"][str(index)]
    return turn


def type_turn(page: Page, text: str) -> None:
    page.fill("#text", text)
    page.press("#text", "Enter")


@pytest.fixture(scope="module")
def server_port() -> Iterator[int]:
    port = free_port()
    with serving(port):
        yield port


def test_typed_turn_plays_every_sample_the_service_sent(browser: Any, server_port: int) -> None:
    with open_page(browser, server_port) as page:
        type_turn(page, "Is a golden retriever a good family dog?")
        page.wait_for_selector(".bubble.assistant .text:has-text('golden retriever')", timeout=15_000)
        turn = wait_played_all(page, 1)
        assert turn["audioSamples"] > 24_000, "a spoken answer of more than a second"
        assert turn["receivedSamples"] == turn["audioSamples"]
        assert turn["playedSamples"] == turn["audioSamples"]
        assert turn["timeToFirstAudioMs"] < turn["audioSamples"] / SAMPLES_PER_MS, "played while streaming"


def test_push_to_talk_sends_the_microphone_and_plays_the_answer(browser: Any, server_port: int) -> None:
    with open_page(browser, server_port) as page:
        talk = page.locator("#talk")
        talk.hover()
        page.mouse.down()
        page.wait_for_timeout(1500)
        page.mouse.up()
        turn = wait_played_all(page, 1)
        captured = counters(page)["capturedSamples"]
        assert captured > 0.8 * 24_000, "most of the 1.5 s hold was captured (the first press opens the mic)"
        # The service measured the audio it received; it is exactly what the page captured and sent.
        assert turn["inputAudioMs"] == captured * 1000 // 24_000
        heard = page.locator(".bubble.assistant .text").first.inner_text()
        assert f"{captured / 24_000:.1f} seconds" in heard
        assert turn["playedSamples"] == turn["audioSamples"] > 12_000


def test_barge_in_stops_playback_and_the_service_records_what_was_heard(
    browser: Any, server_port: int, tmp_path: Path
) -> None:
    with open_page(browser, server_port) as page:
        type_turn(page, LONG_QUESTION)
        page.wait_for_function(
            "() => (window.audiochatTest.turns[1]?.playedSamples ?? 0) > 24000", timeout=20_000
        )
        page.locator("#text").blur()  # in the text box, space types a space; outside it, space talks
        page.keyboard.down("Space")
        page.wait_for_function("() => window.audiochatTest.lastStop !== null", timeout=5_000)
        stop = counters(page)["lastStop"]
        pressed = counters(page)["pressed"]
        # Measured in samples on the audio thread: at most 100 ms more played after the press.
        assert stop["playedSamples"] - pressed["playedSamples"] <= 100 * SAMPLES_PER_MS
        page.wait_for_timeout(300)
        assert counters(page)["turns"]["1"]["playedSamples"] == stop["playedSamples"], (
            "silence after the stop"
        )
        interrupted = wait_turn(page, 1, reason="interrupted")
        assert interrupted["playedMs"] == stop["playedMs"], "the service kept the player's own count"
        assert page.locator(".bubble.assistant .cut").count() == 1
        page.keyboard.up("Space")
        follow_up = wait_played_all(page, 2)
        assert follow_up["playedSamples"] == follow_up["audioSamples"] > 0
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "web-page.png"))


def test_a_dropped_connection_reconnects(browser: Any) -> None:
    port = free_port()
    with serving(port) as first, open_page(browser, port) as page:
        # Dropped mid-answer: the page resumes the conversation and receives the rest of the answer.
        type_turn(page, "Are you there?")
        page.wait_for_function("() => window.audiochatTest.turns[1]?.receivedSamples > 0", timeout=20_000)
        page.evaluate("window.audiochatTest.drop()")
        page.wait_for_function("() => window.audiochatTest.resumed === 1", timeout=20_000)
        resumed = wait_turn(page, 1, reason="stop")
        assert resumed["receivedSamples"] == resumed["audioSamples"], "every sample, across both connections"
        assert page.locator(".bubble.assistant").count() == 1, "the answer continued in its own bubble"
        type_turn(page, "Are you still there?")
        assert wait_turn(page, 2)["reason"] == "stop"
        # The server goes away with the conversation: the page starts a new one on the next server.
        assert first.stop() == 0
        page.wait_for_function("() => !window.audiochatTest.connected", timeout=10_000)
        assert page.locator("#status").inner_text().startswith("connection lost")
        with serving(port):
            page.wait_for_function("() => window.audiochatTest.conversations >= 3", timeout=20_000)
            assert counters(page)["errors"][-1]["code"] == "not_found"
            type_turn(page, "Are you back?")
            assert wait_turn(page, 1)["reason"] == "stop"


def test_a_tool_call_shows_in_the_chat_and_the_answer_continues(browser: Any, server_port: int) -> None:
    with open_page(browser, server_port) as page:
        type_turn(page, "What does get time say?")
        wait_turn(page, 1, "tool_calls")
        # The page ran its tool, showed the call, and sent the result; the service continued by itself.
        page.wait_for_selector(".bubble.tool .text:has-text('get_time({})')", timeout=15_000)
        turn = wait_played_all(page, 2)
        assert turn["audioSamples"] > 24_000
        (call,) = counters(page)["toolCalls"]
        assert call["name"] == "get_time" and call["id"].startswith("call_")
        spoken = page.locator(".bubble.assistant .text").nth(1).inner_text()
        assert spoken == f"get_time returned: {call['result']}."
