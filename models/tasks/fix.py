"""/fix: deblur a photo with our deblurring net at full resolution, plus a before/after crop."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw

from models import images
from models.jobs import File, Job, Result
from models.restore.net import KernelDeblurNet, from_state
from models.restore.tiling import MIN_TILE_SIDE, restore_tiled, tiled_pixels
from models.options import Option
from models.tasks.base import Plan, RunContext, StateDict, Task, decode_cost, image_input, to_image, to_tensor
from models.weights import DEBLUR

COMPARE_SIDE = 384

STRENGTH = Option("strength", float, 1.0, "0 keeps the photo, 1 is the full fix", 0.0, 1.0)
MAX_SIDE = Option("max_side", int, None, "Downscale first to this longest side; default: full size", 64, 100_000)


@dataclass
class Item:
    photo: torch.Tensor  # (3, H, W)
    strength: float


def detailed_window(image: Image.Image, side: int) -> tuple[int, int, int, int]:
    """The square window (at most `side`) with the most edge energy: where a difference shows."""
    side = min(side, image.width, image.height)
    small = np.asarray(image.convert("L").reduce(4), dtype=np.float32)
    energy = np.abs(np.diff(small, axis=0))[:, :-1] + np.abs(np.diff(small, axis=1))[:-1, :]
    integral = np.pad(energy.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    k = max(1, side // 4)
    best, where = -1.0, (0, 0)
    for y in range(0, max(1, integral.shape[0] - k), max(1, k // 4)):
        for x in range(0, max(1, integral.shape[1] - k), max(1, k // 4)):
            y2, x2 = min(y + k, integral.shape[0] - 1), min(x + k, integral.shape[1] - 1)
            total = integral[y2, x2] - integral[y, x2] - integral[y2, x] + integral[y, x]
            if total > best:
                best, where = total, (y * 4, x * 4)
    top, left = min(where[0], image.height - side), min(where[1], image.width - side)
    return left, top, left + side, top + side


def compare_view(before: Image.Image, after: Image.Image) -> Image.Image:
    box = detailed_window(after, COMPARE_SIDE)
    a, b = before.crop(box), after.crop(box)
    canvas = Image.new("RGB", (a.width * 2 + 6, a.height + 20), "white")
    canvas.paste(a, (0, 20))
    canvas.paste(b, (a.width + 6, 20))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 4), "before", fill="black")
    draw.text((a.width + 10, 4), "after /fix", fill="black")
    return canvas


def _max_side(job: Job) -> int:
    side = MAX_SIDE.read(job.options)
    return int(MAX_SIDE.hi) if side is None else side


class Fix(Task):
    name = "fix"
    weights = (DEBLUR,)
    options = (STRENGTH, MAX_SIDE)

    def plan(self, job: Job, limits: images.Limits) -> Plan:
        """Cost: the pixels of every tile the net runs on (overlaps included), and the decoding."""
        STRENGTH.read(job.options)
        info = images.probe(image_input(job, "photo"), limits)
        w, h = images.fit(info.width, info.height, _max_side(job))
        return Plan(key=("fix",), cost=tiled_pixels(h, w, KernelDeblurNet.tiling["cpu"]) / 1e6 + decode_cost(info))

    def load(self, states: Mapping[str, StateDict], device: torch.device, channels_last: bool) -> torch.nn.Module:
        net = from_state(states[DEBLUR.key])
        return net.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format).eval()

    def prepare(self, job: Job, limits: images.Limits) -> Item:
        photo = images.decode(job.images["photo"], limits)
        photo = images.resize(photo, images.fit(*photo.size, _max_side(job)))
        return Item(to_tensor(photo), STRENGTH.read(job.options))

    def run(self, net: torch.nn.Module, items: list[Item], ctx: RunContext) -> list[torch.Tensor]:
        cut = net.tiling["cuda" if ctx.device.type == "cuda" else "cpu"]

        def forward(x: torch.Tensor) -> torch.Tensor:
            return net(ctx.tensor(x))  # full precision: the residual is finer than bf16 can hold

        return restore_tiled(forward, [i.photo for i in items], tile=max(MIN_TILE_SIDE, cut.tile >> ctx.shrink),
                             overlap=cut.overlap, batch=max(1, cut.batch >> ctx.shrink), progress=ctx.progress,
                             wanted=ctx.wanted)

    def finish(self, job: Job, item: Item, output: torch.Tensor) -> Result:
        restored = output.lerp_(item.photo, 1 - item.strength)  # in place: a 40 MP copy is 475 MB
        before, after = to_image(item.photo), to_image(restored)
        # Both files go in one message: the small comparison first, the photo gets the rest of the budget.
        compare, cext = images.encode(compare_view(before, after), "png", job.max_bytes // 4)
        data, ext = images.encode(after, job.format, job.max_bytes - len(compare))
        width, height = images.encoded_size(data)
        info = {"width": width, "height": height, "strength": item.strength}
        return Result((File(f"fixed.{ext}", data), File(f"before-after.{cext}", compare)), info)

    def warmup_jobs(self) -> list[Job]:
        return [Job("fix", {}, {"photo": images.encode(Image.new("RGB", (64, 64), (90, 90, 90)), "png")[0]})]
