"""/stylize: paint a photo in the style of another image, or of a blend of the 26 presets."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torch.nn import functional as F

from models import images
from models.jobs import File, Job, Result
from models.style.arbitrary import STYLE_SIZE, StylePredictor, StyleTransformer
from models.style.presets import PresetStyleNet, parse_presets
from models.options import Option, OptionError
from models.tasks.base import Plan, RunContext, StateDict, Task, decode_cost, image_input, to_image, to_tensor
from models.weights import STYLE_ARBITRARY, STYLE_PRESETS

STRENGTH = Option("strength", float, 1.0, "How much style: 0 keeps the photo, 1 is the full style", 0.0, 1.0)
MAX_SIDE = Option("max_side", int, 1024, "Longest side of the result in pixels; smaller photos keep their size", 64, 2048)
PRESERVE_COLORS = Option("preserve_colors", bool, False, "Keep the photo's own colours and take only the brushwork")
PRESETS = Option("presets", str, None, "A built-in style (used when no style image is given); blends like 3:0.5,12:0.5 work too")
# The predictor's run on one 256 px style image, in units of the transformer's work on an output
# megapixel (0.6 s against 3.8 s on two CPU cores): a fixed cost whatever the output size.
STYLE_VECTOR_COST = 0.16


@dataclass
class Item:
    content: torch.Tensor  # (3, H, W) at the output size
    style: torch.Tensor | None  # (3, 256, 256) centre crop of the style image
    own_style: torch.Tensor | None  # the content's own 256 px crop, when strength < 1 interpolates vectors
    presets: torch.Tensor | None  # (26,) blend weights
    strength: float
    preserve_colors: bool


@dataclass
class Nets:
    predictor: StylePredictor
    transformer: StyleTransformer
    presets: PresetStyleNet


def _square(image: Image.Image, side: int) -> Image.Image:
    """Centre crop to a square, then resize: the predictor was trained on square style images."""
    s = min(image.size)
    left, top = (image.width - s) // 2, (image.height - s) // 2
    return image.crop((left, top, left + s, top + s)).resize((side, side), Image.Resampling.LANCZOS)


def preserve_colors(stylized: Image.Image, original: Image.Image) -> Image.Image:
    """Keep the stylized luminance, take chrominance from the photo (luminance-only transfer)."""
    y, _, _ = stylized.convert("YCbCr").split()
    _, cb, cr = original.convert("YCbCr").split()
    return Image.merge("YCbCr", (y, cb, cr)).convert("RGB")


class Stylize(Task):
    name = "stylize"
    weights = (STYLE_ARBITRARY, STYLE_PRESETS)
    options = (STRENGTH, MAX_SIDE, PRESERVE_COLORS, PRESETS)

    def _options(self, job: Job) -> tuple[float, int, bool, torch.Tensor | None]:
        o = job.options
        presets = None
        if "style" not in job.images:
            if PRESETS.read(o) is None:
                raise OptionError("Give a style image or choose a preset style.")
            presets = parse_presets(PRESETS.read(o))
        return STRENGTH.read(o), MAX_SIDE.read(o), PRESERVE_COLORS.read(o), presets

    def plan(self, job: Job, limits: images.Limits) -> Plan:
        """Cost: the output's pixels, the uploads' decoding, and one style vector per style image
        (two when strength < 1 mixes in the photo's own)."""
        strength, max_side, _, presets = self._options(job)
        info = images.probe(image_input(job, "content"), limits)
        size = images.fit(info.width, info.height, max_side)
        cost = size[0] * size[1] / 1e6 + decode_cost(info)
        if presets is None:
            cost += decode_cost(images.probe(job.images["style"], limits)) + STYLE_VECTOR_COST * (1 if strength >= 1 else 2)
        return Plan(key=("stylize", "image" if presets is None else "preset", size), cost=cost)

    def load(self, states: Mapping[str, StateDict], device: torch.device, channels_last: bool) -> Nets:
        state = states[STYLE_ARBITRARY.key]
        predictor, transformer, presets = StylePredictor(), StyleTransformer(), PresetStyleNet()
        predictor.load_state_dict({k.removeprefix("predictor."): v for k, v in state.items() if k.startswith("predictor.")})
        transformer.load_state_dict({k.removeprefix("transformer."): v for k, v in state.items() if k.startswith("transformer.")})
        presets.load_state_dict(states[STYLE_PRESETS.key])
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        return Nets(*(net.to(device, memory_format=fmt).eval() for net in (predictor, transformer, presets)))

    def prepare(self, job: Job, limits: images.Limits) -> Item:
        strength, max_side, keep_colors, presets = self._options(job)
        content = images.decode(job.images["content"], limits)
        content = images.resize(content, images.fit(*content.size, max_side))
        style = own = None
        if presets is None:
            style = to_tensor(_square(images.decode(job.images["style"], limits), STYLE_SIZE))
            if strength < 1.0:
                own = to_tensor(_square(content, STYLE_SIZE))
        return Item(to_tensor(content), style, own, presets, strength, keep_colors)

    def run(self, nets: Nets, items: list[Item], ctx: RunContext) -> list[torch.Tensor]:
        contents = ctx.tensor(torch.stack([i.content for i in items]))
        size = contents.shape[-2:]
        if ctx.shrink:  # after an out-of-memory error: paint smaller, then scale back up
            contents = F.interpolate(contents, scale_factor=0.7**ctx.shrink, mode="bilinear", antialias=True)
        with ctx.autocast(allowed=True):
            if items[0].presets is None:
                vectors = nets.predictor(ctx.tensor(torch.stack([i.style for i in items]))).float()
                mixed = [n for n, i in enumerate(items) if i.own_style is not None]
                if mixed:
                    own = nets.predictor(ctx.tensor(torch.stack([items[n].own_style for n in mixed]))).float()
                    s = torch.tensor([items[n].strength for n in mixed], device=own.device)[:, None]
                    vectors[mixed] = s * vectors[mixed] + (1 - s) * own
                out = nets.transformer(contents, vectors)
            else:
                out = nets.presets(contents, ctx.tensor(torch.stack([i.presets for i in items])))
        out = out.float()
        if out.shape[-2:] != size:
            out = F.interpolate(out, size=tuple(size), mode="bilinear", align_corners=False).clamp(0, 1)
        ctx.progress(1.0)
        return list(out.cpu())

    def finish(self, job: Job, item: Item, output: torch.Tensor) -> Result:
        original = to_image(item.content)
        result = to_image(output)
        if item.presets is not None and item.strength < 1.0:
            result = Image.blend(original, result, item.strength)
        if item.preserve_colors:
            result = preserve_colors(result, original)
        data, ext = images.encode(result, job.format, job.max_bytes)
        width, height = images.encoded_size(data)
        info: dict[str, Any] = {"width": width, "height": height, "strength": item.strength,
                                "preserve_colors": item.preserve_colors}
        if item.presets is not None:
            info["presets"] = {i: round(float(w), 3) for i, w in enumerate(item.presets) if w > 0}
        return Result((File(f"stylized.{ext}", data),), info)

    def warmup_jobs(self) -> list[Job]:
        buffer = images.encode(Image.new("RGB", (64, 64), (120, 90, 60)), "png")[0]
        return [Job("stylize", {"max_side": 64}, {"content": buffer, "style": buffer}),
                Job("stylize", {"max_side": 64, "presets": "0"}, {"content": buffer})]

