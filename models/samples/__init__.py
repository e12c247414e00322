"""Sample inputs for the demo, the benchmark and the tests, usable with no network.

The photos are scikit-image sample photos with no copyright restrictions (cat and coffee: CC0
by their photographers; astronaut: NASA, public domain). The painting is drawn by code here:
swirling brush strokes along a flow field, in a night-sky palette.
"""

from __future__ import annotations

import io
import math
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

HERE = Path(__file__).parent
PHOTOS = ("cat", "coffee", "astronaut")
PALETTE = ((18, 32, 84), (33, 71, 143), (64, 122, 181), (240, 208, 74), (250, 236, 160), (20, 24, 36), (90, 150, 120))


def photo(name: str) -> bytes:
    """JPEG bytes of one of PHOTOS."""
    return (HERE / f"{name}.jpg").read_bytes()


def painting(size: int = 512, seed: int = 3) -> bytes:
    """PNG bytes of a swirling brush-stroke painting (deterministic for a seed)."""
    rng = random.Random(seed)
    canvas = Image.new("RGB", (size, size), PALETTE[0])
    draw = ImageDraw.Draw(canvas)

    def angle(x: float, y: float) -> float:
        u, v = x / size * 2 * math.pi, y / size * 2 * math.pi
        return 1.7 * math.sin(1.3 * u + math.cos(2.1 * v)) + 1.1 * math.cos(2.4 * v - 0.7 * u)

    for _ in range(2600):
        x, y = rng.uniform(0, size), rng.uniform(0, size)
        swirl = (math.sin(x / size * 5.1) + math.cos(y / size * 3.7) + 2) / 4
        colour = PALETTE[min(len(PALETTE) - 1, int(swirl * len(PALETTE) + rng.uniform(-0.8, 0.8)) % len(PALETTE))]
        points = [(x, y)]
        for _ in range(rng.randint(6, 16)):
            a = angle(x, y)
            x, y = x + 4 * math.cos(a), y + 4 * math.sin(a)
            points.append((x, y))
        draw.line(points, fill=colour, width=rng.randint(3, 7), joint="curve")
    buffer = io.BytesIO()
    canvas.filter(ImageFilter.SMOOTH).save(buffer, "PNG")
    return buffer.getvalue()
