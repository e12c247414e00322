"""The glyph cell every glyph lives in, and the committed reference glyphs, read with numpy alone.

Every glyph is a CELL x CELL image. Ideographs are centred on their ink; every other character
sits on row BASELINE and is centred horizontally on its ink, so x-height, ascenders and
descenders keep their place. Glyphs are stored as packed bits, 1 = ink.

The reference glyphs (the whole charset in one plain sans, `weights/reference.npz`) are what
the content encoder reads for every character, so run time needs no font. They are built by
`python -m research.handwriting.data reference`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CELL = 64
BASELINE = 46
REFERENCE_FILE = Path(__file__).parent / "weights" / "reference.npz"


def unpack_bits(bits: np.ndarray) -> np.ndarray:
    """[N, 512] uint8 -> [N, 64, 64] uint8 in {0, 1}."""
    return np.unpackbits(bits, axis=1).reshape(len(bits), CELL, CELL)


def read_reference(file: Path = REFERENCE_FILE) -> tuple[str, np.ndarray]:
    """The committed reference rendering: (charset, [C, 64, 64] uint8 in {0, 1})."""
    with np.load(file) as f:
        return str(f["charset"]), unpack_bits(f["bits"])
