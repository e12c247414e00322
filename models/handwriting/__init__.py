"""Generated handwriting: a conditional VAE that writes any character of its set in a hand drawn from z.

Public API (pure PyTorch; no fonts at run time: the data is built in `research.handwriting`):

    model = load("cpu")                       # committed fp16 weights + reference glyphs
    z = model.prior(seed, temperature)        # one hand; lower temperature = neater, closer to the average
    ink = model.write(list("你好Hi"), z)      # [N, 1, 64, 64] ink in 0..1; spaces are the layout's job
    covers(ch)                                # False: the caller draws its own fallback

Glyph geometry (for layout): every cell is CELL x CELL; ideographs are centred on their ink;
every other character sits on row BASELINE and is centred horizontally on its ink.
"""

from models.handwriting.charset import CHARSET, covers
from models.handwriting.model import HandwritingModel, load
from models.handwriting.glyphs import BASELINE, CELL

__all__ = ["BASELINE", "CELL", "CHARSET", "HandwritingModel", "covers", "load"]
