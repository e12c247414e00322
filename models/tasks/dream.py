"""/dream: GAN faces by seed: a grid, variations around one face, or a morph between two seeds."""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torchvision.utils import make_grid

from models import images, weights
from models.gan.dcgan import Generator, latents, morph_latents, variations
from models.jobs import File, Job, Result
from models.tasks.base import Plan, RunContext, Task, option_choice, option_float, option_int, to_image

MAX_SEED = 2**53 - 1  # survives a round trip through JSON and JavaScript clients
MAX_FACES = 16
FACE_PX = 64


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
    weights = ("gan-faces",)

    def _item(self, job: Job) -> Item:
        o = job.options
        mode = option_choice(o, "mode", "grid", ("grid", "variations", "morph"))
        seed = option_int(o, "seed", 0, 0, MAX_SEED) if "seed" in o else random_seed()  # reported in info
        truncation = option_float(o, "truncation", 0.8, 0.1, 1.0)
        cell = option_int(o, "cell", 128, FACE_PX, 512)
        if mode == "morph":
            seed_b = option_int(o, "seed_b", (seed + 1) % (MAX_SEED + 1), 0, MAX_SEED)
            frames = option_int(o, "frames", 24, 8, 64)
            z = morph_latents(seed, seed_b, frames, truncation)
            fmt = option_choice(o, "animation", "gif", ("gif", "webp"))
            return Item(mode, seed, seed_b, truncation, z, cell, fmt, option_int(o, "frame_ms", 80, 20, 1000))
        count = option_int(o, "count", 4, 1, MAX_FACES)
        z = latents(seed, count, truncation) if mode == "grid" else variations(seed, count, truncation)
        return Item(mode, seed, None, truncation, z, cell, "", 0)

    def plan(self, job: Job, limits: images.Limits) -> Plan:
        item = self._item(job)
        return Plan(key=("dream",), cost=len(item.latents) * item.cell**2 / 1e6)

    def load(self, device: torch.device, channels_last: bool) -> Generator:
        net = Generator()
        net.load_state_dict(weights.load("gan-faces"))
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
