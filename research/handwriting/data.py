"""Build the training data and the committed reference glyphs (the runtime reads them in
`models.handwriting.glyphs`).

    python -m research.handwriting.data pack --out .data/glyphs.npz [--cache .data/fonts]
    python -m research.handwriting.data reference   # rewrites models/handwriting/weights/reference.npz (committed)

`pack` fetches the Debian fonts itself, keeps each face's cmap-covered characters of
`CHARSET` that draw ink, and stores every glyph as 64x64 packed bits with its face and
character index, the held-out faces and characters, and the reference glyphs, in one
compressed file. Building needs fontTools (the `train` extra).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.handwriting.charset import CHARSET, gb2312_level1
from models.handwriting.glyphs import REFERENCE_FILE
from research import debian

HELD_OUT_CHARS = 200  # GB2312 characters never shown in training (seeded choice)
HELD_OUT_SEED = 2026


def pack_bits(glyphs: np.ndarray) -> np.ndarray:
    """[N, 64, 64] ink (bool or 0..255) -> [N, 512] uint8, 1 = ink."""
    return np.packbits(glyphs.reshape(len(glyphs), -1) >= (128 if glyphs.dtype == np.uint8 else 1), axis=1)


def held_out_chars() -> np.ndarray:
    """A bool mask over CHARSET: the GB2312 characters kept out of training."""
    mask = np.zeros(len(CHARSET), dtype=bool)
    first = CHARSET.index(gb2312_level1()[0])
    picks = np.random.default_rng(HELD_OUT_SEED).choice(len(CHARSET) - first, HELD_OUT_CHARS, replace=False)
    mask[first + picks] = True
    return mask


@dataclass(frozen=True)
class Packed:
    """The packed training data, as numpy arrays (see `pack`)."""

    bits: np.ndarray  # [N, 512] uint8
    face: np.ndarray  # [N] int16, index into faces
    char: np.ndarray  # [N] int16, index into charset
    faces: list[str]
    held_out_face: np.ndarray  # [F] bool
    held_out_char: np.ndarray  # [C] bool
    reference: np.ndarray  # [C, 512] uint8
    charset: str
    recipe: dict

    @classmethod
    def load(cls, file: Path) -> Packed:
        with np.load(file) as f:
            return cls(bits=f["bits"], face=f["face"], char=f["char"], faces=[str(x) for x in f["faces"]],
                       held_out_face=f["held_out_face"], held_out_char=f["held_out_char"],
                       reference=f["reference"], charset=str(f["charset"]), recipe=json.loads(str(f["recipe"])))


def _render_face(path: Path, index: int, chars: str) -> tuple[np.ndarray, list[int]]:
    from research.handwriting.render import open_face, render

    fonts = open_face(path, index)
    glyphs, kept = [], []
    for ch in chars:
        glyph = render(fonts, ch)
        if glyph is not None and (glyph >= 128).sum() >= 2:
            glyphs.append(glyph)
            kept.append(CHARSET.index(ch))
    return np.stack(glyphs), kept


def build_reference(cache: Path) -> np.ndarray:
    """Render the whole charset in the reference face; every character must draw."""
    from research.handwriting import fonts

    root = fonts.fetch((fonts.REFERENCE,), cache)
    glyphs, kept = _render_face(root / fonts.REFERENCE.path, fonts.REFERENCE.index, CHARSET)
    missing = [CHARSET[i] for i in set(range(len(CHARSET))) - set(kept)]
    if missing:
        raise SystemExit(f"the reference face does not draw {''.join(sorted(missing))}")
    return pack_bits(glyphs)


def pack(out: Path, cache: Path) -> None:
    from research.handwriting import fonts

    root = fonts.fetch(fonts.FACES + (fonts.REFERENCE,), cache)
    bits, face_ids, char_ids, per_face = [], [], [], {}
    for i, face in enumerate(fonts.FACES):
        covered = fonts.coverage(face, root, CHARSET)
        glyphs, kept = _render_face(root / face.path, face.index, covered)
        bits.append(pack_bits(glyphs))
        face_ids.append(np.full(len(kept), i, dtype=np.int16))
        char_ids.append(np.array(kept, dtype=np.int16))
        per_face[face.name] = {"package": face.package, "path": face.path, "glyphs": len(kept),
                               "held_out": face.held_out}
        print(f"{face.name:16s} {len(kept):5d} glyphs", flush=True)
    recipe = {"command": f"python -m research.handwriting.data pack --out {out}",
              "debian_packages": debian.package_versions(cache), "faces": per_face,
              "reference_face": fonts.REFERENCE.name, "held_out_chars": HELD_OUT_CHARS,
              "held_out_seed": HELD_OUT_SEED}
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, bits=np.concatenate(bits), face=np.concatenate(face_ids), char=np.concatenate(char_ids),
                        faces=np.array([f.name for f in fonts.FACES]),
                        held_out_face=np.array([f.held_out for f in fonts.FACES]),
                        held_out_char=held_out_chars(), reference=build_reference(cache),
                        charset=np.array(CHARSET), recipe=np.array(json.dumps(recipe)))
    print(f"wrote {out}: {sum(len(b) for b in bits)} glyphs, {out.stat().st_size / 1e6:.1f} MB")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m research.handwriting.data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("pack", "reference"))
    parser.add_argument("--out", type=Path, default=Path(".data/glyphs.npz"))
    parser.add_argument("--cache", type=Path, default=Path(".data/fonts"), help="where .deb files are unpacked")
    args = parser.parse_args(argv)
    if args.command == "pack":
        pack(args.out, args.cache)
    else:
        REFERENCE_FILE.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(REFERENCE_FILE, charset=np.array(CHARSET), bits=build_reference(args.cache))
        print(f"wrote {REFERENCE_FILE}: {REFERENCE_FILE.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
