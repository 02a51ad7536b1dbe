"""What the offline voice says: an honest, short reply about what it received."""

from __future__ import annotations

import re

OFFLINE_NOTE = "This is audiochat's offline voice."
# Long inputs are echoed in part so that answers stay a sentence or two.
MAX_ECHOED_WORDS = 24
# A cut that ends on one of these reads as a broken phrase ("in a small apartment in a"): drop them.
_DANGLING_WORDS = (
    "a an the and or but nor so of in on at to for from by with as into onto than that which who whose "
    "my your his her its our their this these those is are was were be very"
)
_DANGLING = frozenset(_DANGLING_WORDS.split())
_SENTENCE_END = re.compile(r"[.?!…]$")
_CLAUSE_END = re.compile(r"[,;:]$")


def compose_answer(user_text: str, audio_seconds: float | None) -> str:
    """Return the reply: the offline note (every turn, so any answer says what produced it), how much
    audio was heard, and what was said, shortened at a phrase boundary."""
    sentences = [OFFLINE_NOTE]
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
    """The user's words ending in one sentence mark; past MAX_ECHOED_WORDS, cut at the last sentence end,
    else at the last clause end in the second half, else before any dangling function words."""
    words = text.split()
    if len(words) <= MAX_ECHOED_WORDS:
        echoed = " ".join(words).rstrip(" .,;:")
        if not echoed or echoed.endswith(("?", "!")):
            return echoed
        return echoed + "."
    kept = words[:MAX_ECHOED_WORDS]
    cut = _last_index(kept, _SENTENCE_END, MAX_ECHOED_WORDS // 3)
    cut = cut or _last_index(kept, _CLAUSE_END, MAX_ECHOED_WORDS // 2)
    if cut:
        kept = kept[:cut]
    while len(kept) > 1 and kept[-1].strip(".,;:!?").lower() in _DANGLING:
        kept.pop()
    omitted = len(words) - len(kept)
    return " ".join(kept).rstrip(" .,;:?!…") + f", and {omitted} more words."


def _last_index(words: list[str], mark: re.Pattern[str], minimum: int) -> int:
    """The count of words up to the last one ending in `mark`, if at least `minimum`; else 0."""
    for count in range(len(words), minimum - 1, -1):
        if mark.search(words[count - 1]):
            return count
    return 0
