"""What the offline voice says: an honest, short reply about what it received."""

from __future__ import annotations

OFFLINE_NOTE = "This is audiochat's offline voice."
# Long inputs are echoed in part so that answers stay a sentence or two.
MAX_ECHOED_WORDS = 24


def compose_answer(user_text: str, audio_seconds: float | None, first_turn: bool) -> str:
    """Return the reply: what was said and how much audio was heard, with a note on the first turn."""
    sentences: list[str] = []
    if first_turn:
        sentences.append(OFFLINE_NOTE)
    if audio_seconds is not None:
        sentences.append(
            f"I heard {audio_seconds:.1f} seconds of audio, but offline I cannot tell what was said."
        )
    echoed = _echo(user_text)
    if echoed:
        sentences.append(f"You said: {echoed}")
    elif audio_seconds is None:
        sentences.append("Your message had no text or audio that I can read.")
    return " ".join(sentences)


def _echo(text: str) -> str:
    """The user's words, shortened, ending in one sentence mark."""
    words = text.split()
    echoed = " ".join(words[:MAX_ECHOED_WORDS]).rstrip(" .,;:")
    if not echoed:
        return ""
    if len(words) > MAX_ECHOED_WORDS:
        return echoed + ", and more."
    if echoed.endswith(("?", "!")):
        return echoed
    return echoed + "."
