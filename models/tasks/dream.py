"""/dream: GAN faces by seed: a grid, variations around one face, or a morph between two seeds."""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torchvision.utils import make_grid

from models import images
from models.gan.dcgan import Generator, latents, morph_latents, variations
from models.jobs import File, Job, Result
from models.options import Option
from models.tasks.base import Plan, RunContext, StateDict, Task, to_image
from models.weights import GAN_FACES

MAX_SEED = 2**53 - 1  # survives a round trip through JSON and JavaScript clients
FACE_PX = 64

MODE = Option("mode", str, "grid", "A grid of faces, variations of the first one, or a morph", choices=("grid", "variations", "morph"))
COUNT = Option("count", int, 4, "How many faces", 1, 16)
SEED = Option("seed", int, None, "A number naming these faces; default: a random one, shown in the reply", 0, MAX_SEED)
TRUNCATION = Option("truncation", float, 0.8, "Lower gives more average, cleaner faces", 0.1, 1.0)
CELL = Option("cell", int, 128, "Pixels per face in the picture", FACE_PX, 512)
SEED_B = Option("seed_b", int, None, "The seed a morph ends at; default: the next seed", 0, MAX_SEED)
FRAMES = Option("frames", int, 24, "Frames in a morph", 8, 64)
FRAME_MS = Option("frame_ms", int, 80, "Milliseconds per frame of a morph", 20, 1000)
ANIMATION = Option("animation", str, "gif", "The morph's file format", choices=("gif", "webp"))


@dataclass
class Item:
    mode: str
    seed: int
    seed_b: int | None
    truncation: float
    latents: torch.Tensor  # (N, 100)
    cell: int  # shown size of one face in pixels
    anim_format: str
    frame_ms: int


def random_seed() -> int:
    return secrets.randbelow(MAX_SEED + 1)


class Dream(Task):
    name = "dream"
    weights = (GAN_FACES,)
    options = (MODE, COUNT, SEED, TRUNCATION, CELL, SEED_B, FRAMES, FRAME_MS, ANIMATION)

    def _item(self, job: Job) -> Item:
        o = job.options
        mode = MODE.read(o)
        seed = SEED.read(o)
        seed = random_seed() if seed is None else seed  # reported in info
        truncation = TRUNCATION.read(o)
        cell = CELL.read(o)
        if mode == "morph":
            seed_b = SEED_B.read(o)
            seed_b = (seed + 1) % (MAX_SEED + 1) if seed_b is None else seed_b
            z = morph_latents(seed, seed_b, FRAMES.read(o), truncation)
            return Item(mode, seed, seed_b, truncation, z, cell, ANIMATION.read(o), FRAME_MS.read(o))
        count = COUNT.read(o)
        z = latents(seed, count, truncation) if mode == "grid" else variations(seed, count, truncation)
        return Item(mode, seed, None, truncation, z, cell, "", 0)

    def plan(self, job: Job, limits: images.Limits) -> Plan:
        item = self._item(job)
        return Plan(key=("dream",), cost=len(item.latents) * item.cell**2 / 1e6)

    def load(self, states: Mapping[str, StateDict], device: torch.device, channels_last: bool) -> Generator:
        net = Generator()
        net.load_state_dict(states[GAN_FACES.key])
        return net.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format).eval()

    def prepare(self, job: Job, limits: images.Limits) -> Item:
        return self._item(job)

    def run(self, net: Generator, items: list[Item], ctx: RunContext) -> list[torch.Tensor]:
        z = torch.cat([i.latents for i in items])
        chunk = max(1, 256 >> ctx.shrink)
        with ctx.autocast(allowed=True):
            faces = torch.cat([net(ctx.tensor(part)).float().cpu() for part in z.split(chunk)])
        ctx.progress(1.0)
        return list(faces.split([len(i.latents) for i in items]))

    def finish(self, job: Job, item: Item, faces: torch.Tensor) -> Result:
        info: dict[str, Any] = {"mode": item.mode, "seed": item.seed, "truncation": item.truncation}
        if item.mode == "morph":
            frames = [to_image(f).resize((item.cell, item.cell), Image.Resampling.LANCZOS) for f in faces]
            data, ext = images.encode_animation(frames, item.anim_format, item.frame_ms, job.max_bytes)
            info.update(seed_b=item.seed_b, frames=len(frames))
            return Result((File(f"morph.{ext}", data),), info)
        columns = math.ceil(math.sqrt(len(faces)))
        grid = to_image(make_grid(faces, nrow=columns, padding=2, pad_value=1.0))
        scale = item.cell / FACE_PX
        grid = grid.resize((round(grid.width * scale), round(grid.height * scale)), Image.Resampling.LANCZOS)
        data, ext = images.encode(grid, "png" if job.format == "auto" else job.format, job.max_bytes)
        info["count"] = len(faces)
        return Result((File(f"faces.{ext}", data),), info)

    def warmup_jobs(self) -> list[Job]:
        return [Job("dream", {"seed": 0, "count": 1, "cell": FACE_PX})]
