"""Generated handwriting: a conditional VAE that writes any character of its set in a hand drawn from z.

Public API (pure PyTorch; fonts are needed only to build data, never at run time):
`load(device)`, `HandwritingModel.write(chars, z)`, `HandwritingModel.prior(seed, temperature)`,
`HandwritingModel.covers(ch)`, `CHARSET`.
"""

from models.handwriting.charset import CHARSET, covers
from models.handwriting.model import HandwritingModel, load

__all__ = ["CHARSET", "HandwritingModel", "covers", "load"]
