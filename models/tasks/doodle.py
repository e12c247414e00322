"""/doodle: a person's text written by the handwriting VAE, in one invented hand per seed.

A request's distinct characters are written in one batch with its hand z; the requests of a
batch share one network call (one z per glyph). A morph writes the same text along the path
from one hand to another and loops back, as /dream's morph does for faces.
"""

from __future__ import annotations

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
from models.tasks.dream import MAX_SEED, random_seed
from models.weights import HANDWRITING

TEXT = Option("text", str, None, f"Up to {text.MAX_CHARS} characters, Chinese and Latin; | starts a new line")
MODE = Option("mode", str, "write", "Write the text, or morph from one hand to another", choices=("write", "morph"))
SEED = Option("seed", int, None, "A number naming the hand; default: a random one, shown in the reply", 0, MAX_SEED)
NEATNESS = Option("neatness", float, 0.65, "Higher writes closer to the average hand", 0.0, 1.0)
INK = Option("ink", str, page.DEFAULT_INK, "Ink colour", choices=tuple(page.INKS))
SEED_B = Option("seed_b", int, None, "The hand a morph ends at; default: the next seed", 0, MAX_SEED)
FRAMES = Option("frames", int, 16, "Frames in a morph", 4, 48)
FRAME_MS = Option("frame_ms", int, 110, "Milliseconds per frame of a morph", 20, 1000)
GLYPHS_PER_CALL = 1024  # glyphs per network call (halved after an out-of-memory)


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


class Doodle(Task):
    name = "doodle"
    weights = (HANDWRITING,)
    options = (TEXT, MODE, SEED, NEATNESS, INK, SEED_B, FRAMES, FRAME_MS)

    def _item(self, job: Job) -> Item:
        o = job.options
        lines = text.lines(str(TEXT.read(o) or ""), charset.covers)
        seed = SEED.read(o)
        seed = random_seed() if seed is None else seed  # reported in info
        neatness, ink = NEATNESS.read(o), INK.read(o)
        chars = sorted({ch for line in lines for ch in line if charset.covers(ch)})
        if MODE.read(o) == "write":
            return Item(lines, chars, seed, neatness, ink, None, 1, 0)
        seed_b = SEED_B.read(o)
        seed_b = (seed + 1) % (MAX_SEED + 1) if seed_b is None else seed_b
        return Item(lines, chars, seed, neatness, ink, seed_b, FRAMES.read(o), FRAME_MS.read(o))

    def plan(self, job: Job, limits: images.Limits) -> Plan:
        item = self._item(job)
        distinct = 1 if item.seed_b is None else _distinct(item.frames)
        return Plan(key=("doodle",), cost=len(item.chars) * distinct * layout.CELL**2 / 1e6)

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
        step = max(1, GLYPHS_PER_CALL >> ctx.shrink)
        with ctx.autocast(allowed=True):
            ink = torch.cat([model.write(chars[i:i + step], z[i:i + step]).float().cpu() for i in range(0, len(chars), step)]
                            or [torch.zeros(0, 1, layout.CELL, layout.CELL)])
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
