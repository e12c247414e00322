"""The characters the model writes: ASCII digits, letters and punctuation, common CJK punctuation,
and GB2312 level 1 (the 3,755 most common Chinese characters), in one fixed order.

The order is the index used by the packed data and the committed reference glyphs, so it never changes.
"""

from __future__ import annotations

import string

CJK_PUNCTUATION = "，。、；：？！“”‘’（）《》—…·"


def gb2312_level1() -> str:
    """Rows 16-55 of GB2312 (bytes 0xB0A1-0xD7F9), as Python's codec decodes them."""
    chars = []
    for hi in range(0xB0, 0xD8):
        for lo in range(0xA1, 0xFF):
            if hi == 0xD7 and lo > 0xF9:  # row 55 stops at 0xD7F9
                break
            chars.append(bytes((hi, lo)).decode("gb2312"))
    return "".join(chars)


def is_ideograph(ch: str) -> bool:
    """CJK ideographs are drawn ink-centred in the cell; everything else sits on a baseline."""
    return "\u4e00" <= ch <= "\u9fff"


CHARSET: str = string.digits + string.ascii_letters + string.punctuation + CJK_PUNCTUATION + gb2312_level1()
INDEX: dict[str, int] = {ch: i for i, ch in enumerate(CHARSET)}


def covers(ch: str) -> bool:
    """Whether the model can write `ch`; anything else needs the caller's fallback."""
    return ch in INDEX
