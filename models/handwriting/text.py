"""What a person asked to have written: checked, normalised, split into lines of characters.

A slash option carries no newlines, so `|` starts a new line (a newline does too, for the
command line). Characters the model cannot write stay in the text: the page draws them as a
plain fallback box, so nothing is silently dropped.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable

from models.errors import UserError

MAX_CHARS = 200
LINE_BREAKS = "|\n"
SPACES = " \t\u00a0\u3000"  # U+3000 is the ideographic (full-width) space


class TextError(UserError):
    """The text cannot be written at all; the message is one sentence for the person."""


def _writable(ch: str, covers: Callable[[str], bool]) -> str:
    """The character itself, or its compatibility form when only that is written (Ｇ -> G, ﹐ -> ,)."""
    if covers(ch) or ch in SPACES:
        return ch
    folded = unicodedata.normalize("NFKC", ch)
    return folded if len(folded) == 1 and covers(folded) else ch


def _invisible(ch: str) -> bool:
    """Joiners, variation selectors, control characters and lone combining marks draw nothing of their own."""
    return unicodedata.category(ch) in ("Cf", "Cc", "Mn", "Me") and ch not in SPACES


def lines(text: str, covers: Callable[[str], bool]) -> list[str]:
    """The text as lines to write (each stripped, blank ones kept as paragraph gaps); raises TextError."""
    if len(text) > MAX_CHARS:
        raise TextError(f"That text is {len(text)} characters long; I write at most {MAX_CHARS}.")
    text = unicodedata.normalize("NFC", text)
    split = [line.strip(SPACES) for line in text.replace("\r\n", "\n").translate({ord(c): "\n" for c in LINE_BREAKS}).split("\n")]
    while split and not split[-1]:
        split.pop()
    while split and not split[0]:
        split.pop(0)
    if not split:
        raise TextError("Give me some text to write.")
    written = ["".join(_writable(ch, covers) for ch in line if not _invisible(ch)) for line in split]
    if not any(covers(ch) for line in written for ch in line):
        raise TextError("I can't write any of those characters: I know digits, English letters, punctuation "
                        "and the 3,755 most common Chinese characters.")
    return written
