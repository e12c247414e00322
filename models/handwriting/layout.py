"""Where each written glyph goes on the page, so the text looks written, not typeset in a grid.

Glyph cells are CELL x CELL (see `glyphs.py`): letters sit on row BASELINE and are measured by their
ink, so i is narrow and m wide; ideographs are centred on their ink and take about a square `EM`.
A request's seed also fixes the hand's habits (spacing, size, slope) and every small per-glyph
wobble, so the same seed lays out the same page; neatness calms the wobble.

Pure geometry on numpy arrays: no fonts, no model, no pixels drawn here (that is `page.py`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from models.handwriting.charset import is_ideograph
from models.handwriting.glyphs import BASELINE, CELL
from models.handwriting.text import SPACES

EM = 50  # an ideograph's square: its ink is about 46 px tall
IDEOGRAPH_RISE = 19  # an ideograph's ink centre sits this far above the baseline
LATIN_SCALE = 1.1  # letters are drawn with H 28 px tall; a little larger sits well beside ideographs
BEARING = 3  # space left and right of a letter's ink
SPACE = 17
LINE_PITCH = 82  # baseline to baseline
MAX_WIDTH = 960  # lines wrap beyond this many pixels
WIDEST_LETTER = 46  # a letter advances at most this far (so `widest` holds): the model's widest, — M W, take about 41
INK_LEVEL = 0.5  # stroke alpha above which a column counts as ink when measuring
FULL_WIDTH_PUNCTUATION = "，。、；：？！（）《》“”‘’"
NO_BREAK_BEFORE = "，。、；：？！”’）》…·,.;:?!)]}"  # never starts a wrapped line


@dataclass(frozen=True)
class Metrics:
    """How a glyph is anchored: cell point (ax, ay) goes on the pen's baseline position; then the pen advances."""

    ax: float
    ay: float
    advance: float  # on the page, at the hand's normal size
    scale: float = 1.0  # cell pixels -> page pixels


@dataclass(frozen=True)
class Placement:
    char: str
    cx: float  # page position of the cell's centre
    cy: float
    scale: float
    angle: float  # radians, clockwise on the page
    shade: float  # 0..1: how dark the pen pressed


def measure(ch: str, ink: np.ndarray | None) -> Metrics:
    """Metrics of one character from its strokes ([64, 64] alpha), or of a space / fallback box (ink None)."""
    if ch in SPACES:
        return Metrics(0, BASELINE, EM if ch == "\u3000" else SPACE)
    if ink is None:  # the page draws a fallback box ink-centred like an ideograph
        return Metrics(CELL / 2 - 0.44 * EM, CELL / 2 + IDEOGRAPH_RISE, 0.88 * EM)
    columns = np.flatnonzero(ink.max(axis=0) > INK_LEVEL)
    left, right = (float(columns[0]), float(columns[-1] + 1)) if len(columns) else (CELL / 2 - 4, CELL / 2 + 4)
    if is_ideograph(ch):  # centred in its place; narrow ones (一, 小) still take most of a square
        advance = max(0.8 * EM, right - left + 2 * BEARING)
        return Metrics((left + right - advance) / 2, CELL / 2 + IDEOGRAPH_RISE, advance)
    if ch in FULL_WIDTH_PUNCTUATION:  # a small mark with room on both sides: half a square to a square
        return Metrics(left - 2 * BEARING, BASELINE, min(max((right - left + 4 * BEARING) * LATIN_SCALE, EM / 2), EM), LATIN_SCALE)
    return Metrics(left - BEARING, BASELINE, min((right - left + 2 * BEARING) * LATIN_SCALE, WIDEST_LETTER), LATIN_SCALE)


FULL_CELL = np.ones((CELL, CELL), np.float32)


@functools.lru_cache(maxsize=8192)
def widest(ch: str) -> float:
    """The furthest a glyph of `ch` can advance the pen at the hand's normal size (its ink filling the cell,
    or its fallback box), so a page's lines are known before the model writes."""
    return measure(ch, FULL_CELL).advance


def _tokens(line: str) -> list[str]:
    """Units that wrap whole: a run of letters/digits (a word), one space, or one wide character;
    closing punctuation sticks to what it follows."""
    def in_word(ch: str) -> bool:
        return not is_ideograph(ch) and ch not in SPACES and ch not in FULL_WIDTH_PUNCTUATION

    tokens: list[str] = []
    for ch in line:
        joins = tokens and (ch in NO_BREAK_BEFORE or in_word(ch) and in_word(tokens[-1][-1]))
        if joins:
            tokens[-1] += ch
        else:
            tokens.append(ch)
    return tokens


def wrap(lines: list[str], advance: Callable[[str], float], max_width: float = MAX_WIDTH) -> list[str]:
    """Greedy wrapping by tokens; a word wider than a line is cut between letters."""
    out: list[str] = []
    for line in lines:
        current, width = "", 0.0
        for token in _tokens(line):
            w = sum(advance(ch) for ch in token)
            if current and width + w > max_width:
                out.append(current.rstrip(SPACES))
                current, width = "", 0.0
                if token[0] in SPACES:
                    continue
            while w > max_width and len(token) > 1:  # one word longer than the line
                cut = max(1, next((i for i in range(1, len(token) + 1) if sum(advance(c) for c in token[:i]) > max_width), len(token)) - 1)
                out.append(token[:cut])
                token = token[cut:]
                w = sum(advance(ch) for ch in token)
            current += token
            width += w
        out.append(current.rstrip(SPACES))
    return out


@dataclass(frozen=True)
class Hand:
    """The writer's habits, fixed by the seed: one hand per request."""

    spacing: float
    size: float
    slope: float  # radians; the line drifts up or down
    wobble: float  # how unsteady: scales every per-glyph variation

    @classmethod
    def of(cls, rng: np.random.Generator, neatness: float) -> Hand:
        wobble = 1.3 - 0.8 * neatness
        return cls(spacing=float(rng.normal(1.0, 0.05)), size=float(np.exp(rng.normal(0, 0.04))),
                   slope=float(rng.normal(0, 0.006)), wobble=wobble)


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng([seed % 2**63, 0xD00D1E])


@dataclass(frozen=True)
class Extent:
    """How much page some lines take at most, known from the text and the hand alone."""

    lines: int  # wrapped lines, blank ones included
    width: float  # page px of the widest line
    height: float  # page px from the first baseline to the last, at the hand's line pitch


def extent(lines: list[str], seed: int, neatness: float) -> Extent:
    """The page with every glyph at its `widest`: greedy wrapping never needs fewer lines for wider
    glyphs, so the page `lay_out` makes has no more lines than this."""
    hand = Hand.of(_rng(seed), neatness)
    wrapped = wrap(lines, lambda ch: widest(ch) * hand.spacing * hand.size)
    width = max(sum(widest(ch) for ch in line) for line in wrapped) * hand.spacing * hand.size
    return Extent(len(wrapped), min(width, MAX_WIDTH), (len(wrapped) - 1) * LINE_PITCH * hand.size)


def lay_out(lines: list[str], metrics: Mapping[str, Metrics], seed: int, neatness: float) -> list[Placement]:
    """Placements of every visible character of the lines, wrapped; page coordinates start at 0."""
    rng = _rng(seed)
    hand = Hand.of(rng, neatness)
    wrapped = wrap(lines, lambda ch: metrics[ch].advance * hand.spacing * hand.size)
    placements: list[Placement] = []
    baseline = 0.0
    for line in wrapped:
        x = rng.normal(0, 2 * hand.wobble)
        x0 = x
        amplitude, period, phase = rng.normal(0, 1.2 * hand.wobble), rng.uniform(220, 520), rng.uniform(0, 2 * math.pi)
        slope = hand.slope + rng.normal(0, 0.004 * hand.wobble)
        for ch in line:
            m = metrics[ch]
            size = hand.size * float(np.exp(rng.normal(0, 0.035 * hand.wobble)))
            scale = size * m.scale
            angle = float(rng.normal(0, math.radians(1.3) * hand.wobble)) + slope
            dy = rng.normal(0, 0.9 * hand.wobble) + amplitude * math.sin(2 * math.pi * (x - x0) / period + phase) + slope * (x - x0)
            shade = float(rng.uniform(0.82, 1.0))
            if ch not in SPACES:
                # the cell centre lands where the anchor's offset, scaled and turned, says
                ox, oy = (CELL / 2 - m.ax) * scale, (CELL / 2 - m.ay) * scale
                c, s = math.cos(angle), math.sin(angle)
                placements.append(Placement(ch, x + c * ox - s * oy, baseline + dy + s * ox + c * oy, scale, angle, shade))
            x += m.advance * hand.spacing * size * float(rng.normal(1, 0.04 * hand.wobble))
        baseline += LINE_PITCH * hand.size * float(rng.normal(1, 0.02 * hand.wobble))
    return placements
