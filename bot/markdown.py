"""Text that people chose (file names, what they asked to have written), shown exactly as typed.

Discord reads markdown, mentions, links and emoji codes in a message's content. The client is
set never to ping (allowed_mentions), and this escaping keeps the text itself from turning into
formatting, a link, or something that looks like a mention.
"""

from __future__ import annotations

import re

_SPECIAL = re.compile(r"([\\*_~`|<>@#\[\]():/-])")  # markdown, mentions, links, emoji
_ESCAPED = re.compile(r"\\(.)")


def escape(text: str) -> str:
    """The text as Discord shows it verbatim; `unescape` gives it back."""
    return _SPECIAL.sub(r"\\\1", text)


def unescape(text: str) -> str:
    return _ESCAPED.sub(r"\1", text)
