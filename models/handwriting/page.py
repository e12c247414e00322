"""Put the glyphs on paper: every placement scaled, turned and set down in one batched warp, in ink.

Characters the model cannot write get a grey box around a small '?', drawn from the reference
glyph of '?' that ships with the weights: plainly not handwriting, never a blank.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from models.handwriting import layout
from models.handwriting.layout import CELL, Placement

INKS: dict[str, tuple[int, int, int]] = {
    "blue": (30, 56, 140), "black": (24, 24, 32), "sepia": (104, 64, 34), "red": (166, 32, 40), "green": (24, 96, 64),
}
DEFAULT_INK = "blue"
PAPER = (251, 248, 239)
FALLBACK_GREY = (150, 150, 150)
MARGIN = 28
BOX_LEVEL = 5  # 8-bit alpha above which a pixel counts towards the ink box (2%)


@functools.cache
def fallback() -> np.ndarray:
    """The box drawn for characters outside the charset, around the reference '?' shipped with the weights."""
    from models.handwriting.glyphs import read_reference

    chars, glyphs = read_reference()
    return fallback_glyph(glyphs[chars.index("?")].astype(np.float32))


def fallback_glyph(question: np.ndarray) -> np.ndarray:
    """A 64x64 alpha: a thin box with the (typeset) '?' shrunk inside it."""
    box = np.zeros((CELL, CELL), np.float32)
    top, bottom, left, right = 10, 56, 12, 52
    box[top:bottom, left:left + 2] = box[top:bottom, right - 2:right] = 1
    box[top:top + 2, left:right] = box[bottom - 2:bottom, left:right] = 1
    rows, cols = np.nonzero(question > 0.5)
    if len(rows):
        mark = torch.from_numpy(question[rows.min():rows.max() + 1, cols.min():cols.max() + 1].astype(np.float32))
        h, w = mark.shape
        f = min(24 / h, 18 / w)
        mark = F.interpolate(mark[None, None], size=(max(1, round(h * f)), max(1, round(w * f))), mode="area")[0, 0].numpy()
        y, x = (top + bottom - mark.shape[0]) // 2, (left + right - mark.shape[1]) // 2
        box[y:y + mark.shape[0], x:x + mark.shape[1]] = np.maximum(box[y:y + mark.shape[0], x:x + mark.shape[1]], mark)
    return box


@dataclass(frozen=True)
class Sheet:
    """The page as two 8-bit alpha layers (written ink, grey fallbacks) and where page (0, 0) is in them.
    8 bits are what the picture gets anyway, and a morph keeps a sheet per frame until all are drawn."""

    ink: np.ndarray
    grey: np.ndarray
    origin: tuple[int, int]  # (x, y) of page coordinate 0 in the arrays


def patch_size(placements: Sequence[Placement]) -> int:
    """An even square that holds the largest glyph turned by its angle, and a pixel of sub-pixel shift."""
    reach = max(p.scale * (abs(math.cos(p.angle)) + abs(math.sin(p.angle))) for p in placements)
    return 2 * math.ceil(CELL * reach / 2 + 1)


def _warp(cells: torch.Tensor, placements: Sequence[Placement], size: int) -> torch.Tensor:
    """[N, 1, 64, 64] cells -> [N, 1, size, size], each scaled, turned and shifted by its sub-pixel remainder."""
    n = len(placements)
    angle = torch.tensor([p.angle for p in placements], dtype=torch.float32)
    scale = torch.tensor([p.scale for p in placements], dtype=torch.float32)
    frac = torch.tensor([(p.cx - round(p.cx), p.cy - round(p.cy)) for p in placements], dtype=torch.float32)
    cos, sin = torch.cos(angle), torch.sin(angle)
    inverse = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2) / scale[:, None, None]  # page -> cell
    theta = torch.empty(n, 2, 3)
    theta[:, :, :2] = inverse * (size / CELL)
    theta[:, :, 2] = -(inverse @ frac[:, :, None])[:, :, 0] / (CELL / 2)
    # F.affine_grid's result, built by broadcasting: its CPU kernel takes 5x longer
    steps = (torch.arange(size, dtype=torch.float32) * 2 + 1) / size - 1  # pixel centres, as align_corners=False
    grid = steps[None, None, :, None] * theta[:, None, None, :, 0] + steps[None, :, None, None] * theta[:, None, None, :, 1]
    grid += theta[:, None, None, :, 2]
    return F.grid_sample(cells, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def strokes(glyphs: Mapping[str, np.ndarray], lo: float = 0.2, hi: float = 0.8) -> dict[str, np.ndarray]:
    """The model's ink probabilities as pen strokes (alpha). The faint haze of its uncertainty (below
    `lo`) leaves the paper clean and likely ink (above `hi`) is solid, with a smooth edge between;
    a glyph whose surest ink is below `hi` (small marks such as 、 and 。) is first lifted until it reaches it."""
    if not glyphs:
        return {}
    p = np.stack(list(glyphs.values())).astype(np.float32)
    peak = p.reshape(len(p), -1).max(axis=1)[:, None, None]
    t = np.clip((p * hi / np.clip(peak, 0.25, hi) - lo) / (hi - lo), 0, 1)
    return dict(zip(glyphs, t * t * (3 - 2 * t)))


def draw(placements: Sequence[Placement], glyphs: Mapping[str, np.ndarray], fallback: np.ndarray) -> Sheet:
    """Rasterise every placement: written characters from `glyphs` ([64, 64] stroke alpha), others as `fallback`."""
    if not placements:
        empty = np.zeros((1, 1), np.uint8)
        return Sheet(empty, empty, (0, 0))
    cells = torch.from_numpy(np.stack([glyphs.get(p.char, fallback) for p in placements]).astype(np.float32))[:, None]
    size = patch_size(placements)
    patches = (_warp(cells, placements, size)[:, 0] * torch.tensor([p.shade for p in placements])[:, None, None]).numpy()
    patches = np.clip(patches * 255 + 0.5, 0, 255).astype(np.uint8)  # rounding commutes with the maximum below
    xs = [round(p.cx) - size // 2 for p in placements]
    ys = [round(p.cy) - size // 2 for p in placements]
    x0, y0 = min(xs), min(ys)
    shape = (max(ys) - y0 + size, max(xs) - x0 + size)
    ink, grey = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
    for p, patch, x, y in zip(placements, patches, xs, ys):
        layer = ink if p.char in glyphs else grey
        region = layer[y - y0:y - y0 + size, x - x0:x - x0 + size]
        np.maximum(region, patch, out=region)
    return Sheet(ink, grey, (-x0, -y0))


def ink_box(sheets: Sequence[Sheet]) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) in page coordinates around the ink of all sheets, plus a margin."""
    boxes = []
    for s in sheets:
        rows, cols = np.nonzero((s.ink > BOX_LEVEL) | (s.grey > BOX_LEVEL))
        if len(rows):
            boxes.append((cols.min() - s.origin[0], rows.min() - s.origin[1], cols.max() + 1 - s.origin[0], rows.max() + 1 - s.origin[1]))
    if not boxes:
        return (-MARGIN, -MARGIN, MARGIN, MARGIN)
    left, top, right, bottom = (f(b[i] for b in boxes) for i, f in enumerate((min, min, max, max)))
    return (left - MARGIN, top - MARGIN, right + MARGIN, bottom + MARGIN)


def _crop(layer: np.ndarray, origin: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    """The page rectangle `box` of a layer, zero where the layer does not reach."""
    left, top, right, bottom = box
    out = np.zeros((bottom - top, right - left), np.uint8)
    sx, sy = left + origin[0], top + origin[1]  # box corner in layer coordinates
    ys, xs = max(0, sy), max(0, sx)
    ye, xe = min(layer.shape[0], sy + out.shape[0]), min(layer.shape[1], sx + out.shape[1])
    if ye > ys and xe > xs:
        out[ys - sy:ye - sy, xs - sx:xe - sx] = layer[ys:ye, xs:xe]
    return out


def paint(sheet: Sheet, box: tuple[int, int, int, int], ink: str) -> Image.Image:
    """The sheet's `box` as an RGB picture: paper, then grey fallbacks, then ink (each blended by its alpha)."""
    picture = Image.new("RGB", (box[2] - box[0], box[3] - box[1]), PAPER)
    for layer, colour in ((sheet.grey, FALLBACK_GREY), (sheet.ink, INKS[ink])):
        picture.paste(colour, (0, 0), Image.fromarray(_crop(layer, sheet.origin, box), "L"))
    return picture


def pixels(extent: layout.Extent) -> float:
    """About the pixels of the page of that extent (its lines, a glyph's height, the margins): what
    painting and encoding it costs, known before anything is written."""
    return (extent.width + 2 * MARGIN) * (extent.height + CELL + 2 * MARGIN)


def compose(lines: list[str], frames: Sequence[Mapping[str, np.ndarray]], seed: int, neatness: float, ink: str) -> list[Image.Image]:
    """The lines written with each frame's glyphs on one layout (measured on the ink of all frames),
    as pictures of one size: a still is one frame, a morph many. `frames` hold the model's ink probabilities."""
    frames = [strokes(glyphs) for glyphs in frames]
    union: dict[str, np.ndarray] = {}
    for glyphs in frames:
        for ch, g in glyphs.items():
            union[ch] = np.maximum(union[ch], g) if ch in union else g
    metrics = {ch: layout.measure(ch, union.get(ch)) for line in lines for ch in line}
    placements = layout.lay_out(lines, metrics, seed, neatness)
    sheets = [draw(placements, glyphs, fallback()) for glyphs in frames]
    box = ink_box(sheets)
    return [paint(sheet, box, ink) for sheet in sheets]
