"""A sheet to look at: the reference rendering, prior hands, and one sentence in five hands.

    python -m research.handwriting.sample --weights DIR -o grid.png [--temperature 1.0]

DIR holds handwriting.safetensors (a training run's output, or the committed weights folder).
The sentence is set with a crude ink-width spacing: enough to judge a hand, not the product layout.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from models.handwriting.model import HandwritingModel, load

GRID_TEXT = "永和风雨书法你好的是Ag7?qy,"
SENTENCE = "你好，世界！Handwriting 2026 写一行字。"
SEEDS = (1, 2, 3, 4, 5, 6, 7, 8)


def _paper(ink: np.ndarray) -> np.ndarray:
    return (255 - 255 * ink.clip(0, 1)).astype(np.uint8)


def grid(model: HandwritingModel, temperature: float) -> np.ndarray:
    """One row per seed (the top row is the reference rendering), one column per character."""
    chars = list(GRID_TEXT)
    refs = model.references[[model.charset.index(c) for c in chars]].squeeze(1).cpu().numpy()
    rows = [np.concatenate(list(refs), 1)]
    for seed in SEEDS:
        ink = model.write(chars, model.prior(seed, temperature)).squeeze(1).cpu().numpy()
        rows.append(np.concatenate(list(ink), 1))
    return np.concatenate(rows, 0)


def sentence(model: HandwritingModel, seed: int, temperature: float, text: str = SENTENCE) -> np.ndarray:
    """The text in one hand, each glyph cropped to its ink columns (spaces are a fixed gap)."""
    chars = [c for c in text if c != " "]
    ink = iter(model.write(chars, model.prior(seed, temperature)).squeeze(1).cpu().numpy())
    pieces = []
    for c in text:
        if c == " ":
            pieces.append(np.zeros((64, 16)))
            continue
        glyph = next(ink)
        cols = np.flatnonzero(glyph.max(0) > 0.3)
        pieces.append(glyph[:, max(cols[0] - 3, 0):cols[-1] + 4] if len(cols) else np.zeros((64, 12)))
    return np.concatenate(pieces, 1)


def sheet(model: HandwritingModel, temperature: float) -> np.ndarray:
    top = grid(model, temperature)
    lines = [sentence(model, seed, temperature) for seed in SEEDS[:5]]
    width = max(top.shape[1], *(line.shape[1] for line in lines))
    pad = lambda a: np.pad(a, ((0, 8), (0, width - a.shape[1])))  # noqa: E731
    return _paper(np.concatenate([pad(top), *(pad(line) for line in lines)], 0))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m research.handwriting.sample", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, required=True, help="folder with handwriting.safetensors")
    parser.add_argument("-o", "--out", type=Path, default=Path("grid.png"))
    parser.add_argument("--temperature", type=float, default=1.0)
    args = parser.parse_args(argv)
    model = load("cpu", args.weights / "handwriting.safetensors")
    Image.fromarray(sheet(model, args.temperature)).save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
