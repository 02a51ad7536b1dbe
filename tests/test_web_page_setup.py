"""The web page's first minute in a real headless Chromium: a server that needs a key says so in words and
opens the settings at the key, typing meanwhile does not say "wait", a right key connects; on a desktop
the conversation keeps a readable width, the settings button is styled, and each answer's time is labelled.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.processes import audiochat_serve

sync_api = pytest.importorskip("playwright.sync_api")

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
KEY = "page-test-key"
READABLE_WIDTH_PX = 760


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}; `make test` installs it (apt-get install chromium)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def keyed_server() -> Iterator[str]:
    """`audiochat serve` whose edge requires KEY; yields the page's URL."""
    with audiochat_serve(env={"AUDIOCHAT_API_KEYS": KEY}) as serve:
        ready = serve.wait_for("audiochat ready")
        yield f"http://127.0.0.1:{ready['http_port']}/"
        assert serve.stop() == 0


def test_a_server_that_needs_a_key_says_so_and_opens_the_settings(browser: Any, keyed_server: str) -> None:
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(keyed_server)
    page.wait_for_function("window.audiochatTest && window.audiochatTest.keyRefused", timeout=30_000)
    banner = page.locator("#error")
    assert banner.is_visible()
    assert banner.inner_text() == (
        "This server needs an API key. Enter it in the settings above, then press Apply and reconnect."
    )
    assert page.locator("#settings").is_visible()
    assert page.evaluate("document.activeElement.id") == "api-key"
    assert page.locator("#status").inner_text() == "needs an API key"

    # Typing meanwhile says what will help, not "wait a moment".
    page.fill("#text", "Hello?")
    page.press("#text", "Enter")
    assert "needs an API key" in banner.inner_text()

    # A wrong key is named as wrong; the right one connects and answers.
    page.fill("#api-key", "not-the-key")
    page.click("#settings button[type=submit]")
    page.wait_for_function("window.audiochatTest.keyRefused", timeout=30_000)
    assert banner.inner_text() == (
        "This server refused this API key. Correct it in the settings above, then press Apply and reconnect."
    )
    page.fill("#api-key", KEY)
    page.click("#settings button[type=submit]")
    page.wait_for_function("window.audiochatTest.connected", timeout=30_000)
    assert not banner.is_visible()
    page.fill("#text", "Is a golden retriever a good family dog?")
    page.press("#text", "Enter")
    page.wait_for_function(
        "window.audiochatTest.turns[1] && window.audiochatTest.turns[1].reason", timeout=30_000
    )
    meta = page.locator(".bubble.assistant .meta").first.inner_text()
    assert "done in " in meta and " s" in meta, meta
    assert errors == []
    page.close()


def test_on_a_desktop_the_page_keeps_a_readable_width_and_styled_buttons(
    browser: Any, keyed_server: str
) -> None:
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    page.goto(keyed_server)
    page.wait_for_function("window.audiochatTest && window.audiochatTest.keyRefused", timeout=30_000)
    composer = page.locator("footer.composer").bounding_box()
    text_input = page.locator("#text").bounding_box()
    talk = page.locator("#talk").bounding_box()
    assert composer is not None and text_input is not None and talk is not None
    # Input and button together stay within the readable width, centred in the window.
    left, right = text_input["x"], talk["x"] + talk["width"]
    assert right - left <= READABLE_WIDTH_PX
    assert abs((left - composer["x"]) - (composer["x"] + composer["width"] - right)) < 40
    apply = page.locator("#settings button[type=submit]")
    style = apply.evaluate(
        "b => { const s = getComputedStyle(b); return [s.backgroundColor, s.borderRadius, s.borderStyle]; }"
    )
    send = page.locator(".send").evaluate("b => getComputedStyle(b).backgroundColor")
    assert style[0] == send, "the same accent as the page's other buttons"
    assert style[1] != "0px" and style[2] == "none"
    page.close()
