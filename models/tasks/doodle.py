"""/doodle: a person's text written by the handwriting VAE, in one invented hand per seed.

A request's distinct characters are written in one batch with its hand z; the requests of a
batch share one network call (one z per glyph). A morph writes the same text along the path
from one hand to another and loops back, as /dream's morph does for faces.

The page's size is known from the text before anything is written (`layout.extent`), so `plan`
refuses a page or a morph past the bounds and costs a job by all it does: glyphs, pages, frames.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from models import images
from models.gan.dcgan import slerp
from models.handwriting import charset, layout, page, text
from models.handwriting.model import HandwritingModel, from_state
from models.jobs import File, Job, Result
from models.options import Option
from models.tasks.base import Plan, RunContext, StateDict, Task
from models.tasks.dream import MAX_SEED
from models.weights import HANDWRITING

TEXT = Option("text", str, None, f"Up to {text.MAX_CHARS} characters, Chinese and Latin; | starts a new line")
MODE = Option("mode", str, "write", "Write the text, or morph from one hand to another", choices=("write", "morph"))
SEED = Option("seed", int, None, "A number naming the hand; default: a random one, shown in the reply", 0, MAX_SEED)
NEATNESS = Option("neatness", float, 0.65, "Higher writes closer to the average hand", 0.0, 1.0)
INK = Option("ink", str, page.DEFAULT_INK, "Ink colour", choices=tuple(page.INKS))
SEED_B = Option("seed_b", int, None, "The hand a morph ends at; default: the next seed", 0, MAX_SEED)
MAX_FRAMES = 48
FRAMES = Option("frames", int, 16, "Frames in a morph", 4, MAX_FRAMES)
FRAME_MS = Option("frame_ms", int, 110, "Milliseconds per frame of a morph", 20, 1000)
GLYPHS_PER_CALL = 1024  # glyphs per network call on an accelerator (halved after an out-of-memory)
CPU_GLYPHS_PER_CALL = 64  # what a CPU's caches hold: 5000 glyphs take 2.5 s on two threads, 5.9 s 1024 at a time

# One job's page and frames are bounded, so its memory and time are, whatever the text: at most
# about 350 MB above a warm worker (whose weights and libraries take 770 MB) and 7 s of a core.
# A page's lines are `layout.extent`'s (never fewer than get written); a morph's frames x lines
# measures its frame pixels. Whole jobs, each in a fresh process on one torch thread (CPU time, peak
# resident memory above the warm worker):
#   21 frames of the tallest page, 48 lines of the widest ideographs (918 x 4459 px)   3.2 s, 330 MB
#   48 frames of 21 lines (920 x 1954 px)                                              3.4 s, 280 MB
#   the densest, 48 frames of 200 distinct ideographs (13 lines)                       7.2 s, 330 MB
#   200 ideographs written once                                                        0.5 s,  60 MB
#   before these bounds, 16 frames of 171 lines (991 x 14535 px)                      12 s,  970 MB
MAX_LINES = 48
MAX_FRAME_LINES = 1008  # 48 frames of 21 lines (200 ideographs in any hand, a few paragraphs), 21 of the tallest page

# Seconds of a job's parts on one core of the bot's CPU, fitted to 13 jobs from one word to a
# 14-megapixel morph: `Plan.cost` is within 0.7-1.2x of each one's time (a blank page's quick PNG: 0.5x).
JOB_S = 0.012  # a network call and a file, whatever their size
CONTENT_S_PER_CHAR = 1.6e-3  # the network's features of a character, once per job
NET_S_PER_GLYPH = 0.6e-3  # the network writing one character in one frame's hand
SET_S_PER_GLYPH = 0.08e-3  # a glyph turned and set on one frame
PAINT_S_PER_MEGAPIXEL = 0.009  # ink on paper, per distinct frame
ENCODE_S_PER_FRAME = 1e-3  # PNG or GIF, per frame of the loop, however small
ENCODE_S_PER_MEGAPIXEL = 0.035  # and per megapixel of it
SECONDS_PER_UNIT = 3.0  # a megapixel-equivalent: a megapixel through /stylize's or /fix's network (2-4 s on two cores)


def temperature(neatness: float) -> float:
    """Neatness 0 draws the hand from the whole prior; 1 writes close to the average hand."""
    return 1.0 - 0.85 * neatness


@dataclass
class Item:
    lines: list[str]
    chars: list[str]  # the distinct characters the model writes
    seed: int
    neatness: float
    ink: str
    seed_b: int | None  # set for a morph
    frames: int
    frame_ms: int


def _hands(model: HandwritingModel, item: Item) -> torch.Tensor:
    """[F, D]: the request's hand, or the distinct frames of a morph (the loop back reuses them)."""
    z = model.prior(item.seed, temperature(item.neatness))
    if item.seed_b is None:
        return z[None]
    return slerp(z.cpu(), model.prior(item.seed_b, temperature(item.neatness)).cpu(), _distinct(item.frames))


def _distinct(frames: int) -> int:
    """Frames from a to b inclusive; the way back repeats them."""
    return (frames + 1) // 2 + 1


def _loop(distinct: list[Any], frames: int) -> list[Any]:
    """There and back: a, ..., b, ..., (just before a), `frames` long."""
    return (distinct + distinct[-2:0:-1])[:frames]


def _check_size(extent: layout.Extent, item: Item) -> None:
    """One sentence naming the bound a page or a morph would pass."""
    if extent.lines > MAX_LINES:
        raise text.TextError(f"That text would make a page of {extent.lines} lines; I write at most {MAX_LINES} lines.")
    most = min(MAX_FRAMES, MAX_FRAME_LINES // extent.lines)
    if item.seed_b is not None and item.frames > most:
        raise text.TextError(f"That text makes a page of {extent.lines} lines, so a morph of it has at most {most} frames.")


def _seconds(item: Item, extent: layout.Extent) -> float:
    """What the job takes: the network writes each distinct frame's glyphs, which are set on the
    page and painted; every frame of the loop is encoded."""
    distinct = 1 if item.seed_b is None else _distinct(item.frames)
    placed = sum(ch not in text.SPACES for line in item.lines for ch in line)
    megapixels = page.pixels(extent) / 1e6
    network = len(item.chars) * (CONTENT_S_PER_CHAR + distinct * NET_S_PER_GLYPH)
    frames = distinct * (placed * SET_S_PER_GLYPH + megapixels * PAINT_S_PER_MEGAPIXEL)
    return JOB_S + network + frames + item.frames * (ENCODE_S_PER_FRAME + megapixels * ENCODE_S_PER_MEGAPIXEL)


class Doodle(Task):
    name = "doodle"
    weights = (HANDWRITING,)
    options = (TEXT, MODE, SEED, NEATNESS, INK, SEED_B, FRAMES, FRAME_MS)

    def _item(self, job: Job) -> Item:
        o = job.options
        lines = text.lines(str(TEXT.read(o) or ""), charset.covers)
        seed = SEED.read(o)
        seed = random.Random(job.id).randint(0, MAX_SEED) if seed is None else seed  # plan's hand is prepare's
        neatness, ink = NEATNESS.read(o), INK.read(o)
        chars = sorted({ch for line in lines for ch in line if charset.covers(ch)})
        if MODE.read(o) == "write":
            return Item(lines, chars, seed, neatness, ink, None, 1, 0)
        seed_b = SEED_B.read(o)
        seed_b = (seed + 1) % (MAX_SEED + 1) if seed_b is None else seed_b
        return Item(lines, chars, seed, neatness, ink, seed_b, FRAMES.read(o), FRAME_MS.read(o))

    def plan(self, job: Job, limits: images.Limits) -> Plan:
        """Refuses a page or morph past the bounds from the text alone; cost: the seconds of all the job's parts."""
        item = self._item(job)
        extent = layout.extent(item.lines, item.seed, item.neatness)
        _check_size(extent, item)
        return Plan(key=("doodle",), cost=_seconds(item, extent) / SECONDS_PER_UNIT)

    def load(self, states: Mapping[str, StateDict], device: torch.device, channels_last: bool) -> HandwritingModel:
        return from_state(states[HANDWRITING.key], device)

    def prepare(self, job: Job, limits: images.Limits) -> Item:
        return self._item(job)

    def run(self, model: HandwritingModel, items: list[Item], ctx: RunContext) -> list[np.ndarray]:
        """One z per glyph, so every request of the batch goes through the network together."""
        chars: list[str] = []
        zs: list[torch.Tensor] = []
        counts = []
        for item in items:
            hands = _hands(model, item).to(ctx.device)
            chars += item.chars * len(hands)
            zs.append(hands.repeat_interleave(len(item.chars), 0))
            counts.append((len(hands), len(item.chars)))
        z = torch.cat(zs)
        step = max(1, (CPU_GLYPHS_PER_CALL if ctx.device.type == "cpu" else GLYPHS_PER_CALL) >> ctx.shrink)
        ink = torch.empty(len(chars), 1, layout.CELL, layout.CELL)  # filled call by call: no copy to concatenate
        with ctx.autocast(allowed=True):
            for i in range(0, len(chars), step):
                ink[i:i + step] = model.write(chars[i:i + step], z[i:i + step])
        ctx.progress(1.0)
        out, start = [], 0
        for frames, n in counts:
            out.append(ink[start:start + frames * n, 0].reshape(frames, n, layout.CELL, layout.CELL).numpy())
            start += frames * n
        return out

    def finish(self, job: Job, item: Item, ink: np.ndarray) -> Result:
        pictures = page.compose(item.lines, [dict(zip(item.chars, frame)) for frame in ink], item.seed, item.neatness, item.ink)
        unwritten = "".join(dict.fromkeys(ch for line in item.lines for ch in line
                                          if not charset.covers(ch) and ch not in text.SPACES))
        info: dict[str, Any] = {"text": str(job.options.get("text", "")), "seed": item.seed, "neatness": item.neatness,
                                "ink": item.ink, "unwritten": unwritten}
        if item.seed_b is None:
            data, ext = images.encode(pictures[0], "png" if job.format == "auto" else job.format, job.max_bytes)
            return Result((File(f"doodle.{ext}", data),), {"mode": "write", **info})
        data, ext = images.encode_animation(_loop(pictures, item.frames), "gif", item.frame_ms, job.max_bytes)
        return Result((File(f"morph.{ext}", data),), {"mode": "morph", "seed_b": item.seed_b, "frames": item.frames, **info})

    def warmup_jobs(self) -> list[Job]:
        return [Job("doodle", {"text": "Aa 永", "seed": 0})]
