"""Draw one character of a font into the CELL x CELL cell every glyph lives in (`models.handwriting.glyphs`).

Ideographs are centred on their ink (as glyph-generation work does) at a size where 田 (in every Chinese
face, simplified or traditional) is `IDEOGRAPH_HEIGHT` pixels tall. Everything else sits on row `BASELINE` at a size where H is
`CAP_HEIGHT` tall, centred horizontally on its ink, so x-height, ascenders and descenders
(g, p, y, commas) keep their place. Fonts differ wildly in nominal size; these two measured
heights make all faces comparable. Needs a font file, so it is used only to build data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from models.handwriting.charset import is_ideograph
from models.handwriting.glyphs import BASELINE, CELL

CAP_HEIGHT = 28
IDEOGRAPH_HEIGHT = 46
MAX_INK = 60  # a glyph wider or taller than this is scaled down to fit
_CANVAS = 256
_ORIGIN = (128, 160)  # where the baseline starts on the scratch canvas


@dataclass(frozen=True)
class FaceFonts:
    latin: ImageFont.FreeTypeFont
    ideograph: ImageFont.FreeTypeFont


def _ink_height(path: Path, index: int, ch: str, size: int = 200) -> int:
    box = _draw(ImageFont.truetype(str(path), size, index=index), ch).getbbox()
    return box[3] - box[1] if box else 0


def open_face(path: Path, index: int = 0) -> FaceFonts:
    """The face at two sizes, one scaled by its capital H, one by its 田 (if it has one)."""
    latin = round(200 * CAP_HEIGHT / _ink_height(path, index, "H"))
    tian = _ink_height(path, index, "田")
    ideograph = round(200 * IDEOGRAPH_HEIGHT / tian) if tian else latin
    return FaceFonts(ImageFont.truetype(str(path), latin, index=index),
                     ImageFont.truetype(str(path), ideograph, index=index))


def _draw(font: ImageFont.FreeTypeFont, ch: str) -> Image.Image:
    canvas = Image.new("L", (_CANVAS, _CANVAS), 0)
    ImageDraw.Draw(canvas).text(_ORIGIN, ch, font=font, fill=255, anchor="ls")
    return canvas


def render(fonts: FaceFonts, ch: str) -> np.ndarray | None:
    """The glyph as a 64x64 uint8 ink image (255 = ink), or None when the font draws nothing."""
    ideograph = is_ideograph(ch)
    font = fonts.ideograph if ideograph else fonts.latin
    canvas = _draw(font, ch)
    box = canvas.getbbox()
    if box is None:
        return None
    x0, y0, x1, y1 = box
    ink = canvas.crop(box)
    scale = min(1.0, MAX_INK / max(x1 - x0, 1), MAX_INK / max(y1 - y0, 1) if ideograph else 1.0)
    if scale < 1.0:
        ink = ink.resize((max(1, round(ink.width * scale)), max(1, round(ink.height * scale))), Image.LANCZOS)
    cell = Image.new("L", (CELL, CELL), 0)
    left = (CELL - ink.width) // 2
    if ideograph:
        top = (CELL - ink.height) // 2
    else:  # keep the ink's height above the baseline (scaled with the glyph)
        top = BASELINE - round((_ORIGIN[1] - y0) * scale)
    cell.paste(ink, (left, top))
    return np.asarray(cell)
