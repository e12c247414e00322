"""Does /doodle write legibly, in hands that differ between seeds and hold within a line? Prints JSON.

    python -m research.handwriting.evaluate [--data .data/glyphs.npz] [--seeds 12] [--neatness N] [--images DIR]

* Legibility: a real OCR engine (Debian's tesseract with chi_sim and eng: `apt-get install
  tesseract-ocr tesseract-ocr-chi-sim tesseract-ocr-eng`, or `--skip ocr`) reads natural sentences that /doodle wrote, through the product's own
  path (the doodle task: model, layout, paper), several seeds each at the default neatness.
  Character accuracy is 1 - (edit distance / reference length), summed over lines; Chinese is
  scored on its ideographs, Latin on letters and digits, digits on digits. The ceiling is the
  same text in the plain reference rendering on the same layout.
* Diversity: the same character in two seeds against the same character in two training fonts
  (binarised ink, centred on its centroid, mean pixel L1); distance to the reference rendering.
* Consistency: stroke width and slant of the glyphs of one line (one hand), the character's own
  shape removed: how much of their variation the whole line shares.
* Reconstruction of held-out fonts (style encoder on 8 of a face's glyphs, then 64 others
  written with that z): L1 and SSIM, next to the average hand (z = 0); KL per latent dimension.

The glyph data (`--data`) is built with `python -m research.handwriting.data pack` when missing.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import tempfile
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from models.handwriting import charset, page
from models.handwriting.glyphs import unpack_bits
from models.handwriting.layout import LINE_PITCH
from models.handwriting.model import HandwritingModel, kl_per_dim, load
from models.jobs import Job
from models.tasks.base import RunContext
from models.tasks.doodle import NEATNESS, Doodle, temperature
from research.handwriting.data import Packed

# Held-out natural text, written for this benchmark (no training data is text: the model sees glyphs).
CHINESE = [
    "早上我去市场买了一些水果", "他每天晚上都会读半个小时的书", "这座城市的春天来得比往年早",
    "请把窗户打开让新鲜空气进来", "我们明天下午在图书馆门口见面", "她的母亲是一位很有经验的医生",
    "这条河从山里流出来一直向东", "孩子们在操场上快乐地跑来跑去", "学习一门语言需要时间和耐心",
    "秋天的树叶变成了金黄色", "他把自己的想法写在一张纸上", "这家小店的面条非常好吃",
]
ENGLISH = [  # one line each in any hand (about 32 letters at most), as are the Chinese ones (14 at most)
    "The quick brown fox jumps high", "Please call me when you get home", "We walked along the river",
    "She found an old letter", "Good ideas come on long walks", "The library opens at nine",
    "My brother likes strong coffee", "Write clearly so others can read",
]
DIGITS = ["2026 11 30", "3 1415926 535", "0123 4567 89", "86 10 6275 1234", "1969 07 20", "555 0199 42"]


TESSERACT_PACKAGES = ("tesseract-ocr", "tesseract-ocr-chi-sim", "tesseract-ocr-eng")


def tesseract_version() -> str:
    """Tesseract's version line; stops with the command that installs it (with Chinese and
    English) when it is missing: an evaluation installs nothing on the system."""
    ready = shutil.which("tesseract") is not None and {"chi_sim", "eng"} <= set(
        subprocess.run(["tesseract", "--list-langs"], capture_output=True, text=True).stdout.split())
    if not ready:
        raise SystemExit(f"tesseract with chi_sim and eng is missing: apt-get install {' '.join(TESSERACT_PACKAGES)}"
                         " (or --skip ocr)")
    return subprocess.run(["tesseract", "--version"], capture_output=True, text=True).stdout.splitlines()[0]


def ocr(picture: Image.Image, lang: str) -> str:
    """The text as tesseract reads it: as one line (page segmentation 7; it reads a single line of
    the reference rendering at 0.97 where 6, a block, reaches 0.91), or as a block if it wrapped."""
    psm = "7" if picture.height < 1.5 * LINE_PITCH + 2 * page.MARGIN else "6"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "line.png"
        picture.convert("L").save(path)
        done = subprocess.run(["tesseract", str(path), "stdout", "-l", lang, "--psm", psm], capture_output=True, text=True)
    return done.stdout.strip()


def scored(kind: str, s: str) -> str:
    """What a kind of text is scored on: ideographs, letters and digits, or digits."""
    s = unicodedata.normalize("NFKC", s)
    keep = {"chinese": charset.is_ideograph, "latin": str.isalnum, "digits": str.isdigit}[kind]
    return "".join(ch for ch in s if keep(ch) and ch.isascii() == (kind != "chinese"))


def edit_distance(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def accuracy(pairs: list[tuple[str, str]]) -> float:
    """Character accuracy over (reference, reading) pairs: 1 - total edits / total reference length."""
    return round(1 - sum(edit_distance(r, h) for r, h in pairs) / sum(len(r) for r, _ in pairs), 4)


def write(model: HandwritingModel, jobs: list[Job]) -> list[Image.Image]:
    """Pictures exactly as /doodle makes them (the doodle task's prepare, run, finish), batched."""
    task = Doodle()
    items = [task.prepare(job, None) for job in jobs]
    inks = task.run(model, items, RunContext(model.device))
    out = []
    for job, item, ink in zip(jobs, items, inks):
        result = task.finish(job, item, ink)
        out.append(Image.open(io.BytesIO(result.files[0].data)).convert("RGB"))
    return out


def legibility(model: HandwritingModel, seeds: list[int], neatness: float, images: Path | None) -> dict[str, Any]:
    """OCR of the sentences in each seed's hand, and of the reference rendering on the same layout."""
    _, references = _reference()
    report: dict[str, Any] = {}
    for kind, lang, lines in (("chinese", "chi_sim", CHINESE), ("latin", "eng", ENGLISH), ("digits", "eng", DIGITS)):
        jobs = [Job("doodle", {"text": line, "seed": s, "neatness": neatness, "ink": "black"}) for s in seeds for line in lines]
        written = write(model, jobs)
        hand = [(scored(kind, j.options["text"]), scored(kind, ocr(p, lang))) for j, p in zip(jobs, written)]
        typeset = []
        for line in lines:
            glyphs = {ch: references[charset.INDEX[ch]] for ch in set(line) if charset.covers(ch)}
            (picture,) = page.compose([line], [glyphs], 0, 1.0, "black")
            typeset.append((scored(kind, line), scored(kind, ocr(picture, lang))))
        report[kind] = {"lines": len(hand), "characters": sum(len(r) for r, _ in hand), "accuracy": accuracy(hand),
                        "reference_rendering_accuracy": accuracy(typeset),
                        "per_seed": {s: accuracy(hand[i * len(lines):(i + 1) * len(lines)]) for i, s in enumerate(seeds)},
                        "example": {"wrote": hand[0][0], "read": hand[0][1]}}
        if images is not None:
            _stack(written[::len(lines)]).save(images / f"ocr-{kind}-seeds.png")
    return report


def _reference() -> tuple[str, np.ndarray]:
    from models.handwriting.glyphs import read_reference

    chars, glyphs = read_reference()
    return chars, glyphs.astype(np.float32)


def _stack(pictures: list[Image.Image]) -> Image.Image:
    sheet = Image.new("RGB", (max(p.width for p in pictures), sum(p.height for p in pictures)), page.PAPER)
    y = 0
    for p in pictures:
        sheet.paste(p, (0, y))
        y += p.height
    return sheet


def centred(ink: np.ndarray) -> np.ndarray:
    """[N, 64, 64] -> binarised at 0.5 and shifted so each glyph's ink centroid is the cell centre."""
    out = np.zeros(ink.shape, np.float32)
    for i, g in enumerate(ink >= 0.5):
        rows, cols = np.nonzero(g)
        if not len(rows):
            continue
        dy, dx = 32 - round(rows.mean() + 0.5), 32 - round(cols.mean() + 0.5)
        out[i] = np.roll(g, (dy, dx), axis=(0, 1))
        if dy > 0:
            out[i, :dy] = 0
        elif dy < 0:
            out[i, dy:] = 0
        if dx > 0:
            out[i, :, :dx] = 0
        elif dx < 0:
            out[i, :, dx:] = 0
    return out


def _sample_chars(data: Packed, rng: np.random.Generator) -> np.ndarray:
    """32 ideographs and 16 other characters that several training faces draw and training saw."""
    train = ~data.held_out_face[data.face] & ~data.held_out_char[data.char]
    faces_per_char = np.bincount(data.char[train], minlength=len(data.charset))
    ideo = np.array([charset.is_ideograph(c) for c in data.charset])
    pick = [rng.choice(np.flatnonzero((faces_per_char >= 3) & (ideo == cls)), n, replace=False) for cls, n in ((True, 32), (False, 16))]
    return np.concatenate(pick)


def diversity(model: HandwritingModel, data: Packed, seeds: list[int], neatness: float, rng: np.random.Generator) -> dict[str, Any]:
    chars = _sample_chars(data, rng)
    text = [data.charset[c] for c in chars]
    glyphs = unpack_bits(data.bits)
    refs = centred(unpack_bits(data.reference[chars]).astype(np.float32))
    hands = np.stack([centred(model.write(text, model.prior(s, temperature(neatness)))[:, 0].cpu().numpy())
                      for s in seeds])  # [S, C, 64, 64]
    between_seeds = np.mean([np.abs(hands[a] - hands[b]).mean() for a in range(len(seeds)) for b in range(a + 1, len(seeds))])
    train = ~data.held_out_face[data.face]
    fonts, font_to_ref = [], []
    for c, ref in zip(chars, refs):
        rows = np.flatnonzero(train & (data.char == c))
        faces = centred(glyphs[rows].astype(np.float32))
        fonts += [np.abs(faces[a] - faces[b]).mean() for a in range(len(rows)) for b in range(a + 1, len(rows))]
        font_to_ref += [np.abs(f - ref).mean() for f in faces]
    return {"characters": len(chars), "seeds": len(seeds),
            "l1_same_char_two_seeds": round(float(between_seeds), 4),
            "l1_same_char_two_training_fonts": round(float(np.mean(fonts)), 4),
            "ratio_seeds_to_fonts": round(float(between_seeds / np.mean(fonts)), 3),
            "l1_output_to_reference": round(float(np.abs(hands - refs[None]).mean()), 4),
            "l1_training_font_to_reference": round(float(np.mean(font_to_ref)), 4)}


def _stroke_and_slant(ink: np.ndarray) -> tuple[float, float]:
    """Stroke width (2 x area / perimeter) and slant (shear of the ink about its centroid) of one glyph."""
    g = ink >= 0.5
    area = g.sum()
    if area < 4:
        return float("nan"), float("nan")
    inner = g[1:-1, 1:-1] & g[:-2, 1:-1] & g[2:, 1:-1] & g[1:-1, :-2] & g[1:-1, 2:]
    perimeter = area - inner.sum()
    rows, cols = np.nonzero(g)
    y, x = rows - rows.mean(), cols - cols.mean()
    return float(2 * area / max(perimeter, 1)), float(-(x * y).sum() / max((y * y).sum(), 1))


def consistency(model: HandwritingModel, data: Packed, seeds: list[int], neatness: float, rng: np.random.Generator) -> dict[str, Any]:
    """Is a line one hand? Stroke width and slant of 32 ideographs in each of several hands: after
    removing what each character is (its mean over hands), a consistent hand moves every glyph of
    its line the same way. `hand_share` is the part of that variation shared by the whole line
    (1: one hand throughout; 0: every glyph varies on its own)."""
    line = [data.charset[c] for c in _sample_chars(data, rng)[:32]]  # ideographs only: one kind of glyph
    features = np.array([[_stroke_and_slant(g) for g in model.write(line, model.prior(s, temperature(neatness)))[:, 0].cpu().numpy()]
                         for s in seeds])  # [hands, glyphs, 2]
    report: dict[str, Any] = {"seeds": len(seeds), "glyphs_per_line": len(line)}
    for i, name in enumerate(("stroke_width_px", "slant")):
        residual = features[:, :, i] - np.nanmean(features[:, :, i], axis=0, keepdims=True)  # the character removed
        hand = np.nanmean(residual, axis=1, keepdims=True)  # what the line's hand does to every glyph
        shared, own = float(np.nanvar(hand)), float(np.nanvar(residual - hand))
        report[name] = {"between_hands_std": round(shared**0.5, 4), "within_line_std": round(own**0.5, 4),
                        "hand_share": round(shared / (shared + own), 3)}
    return report


def _ssim(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    return float(np.mean([structural_similarity(x, y, data_range=1.0) for x, y in zip(a, b)]))


@torch.no_grad()
def reconstruction(model: HandwritingModel, data: Packed, rng: np.random.Generator) -> dict[str, Any]:
    """Held-out faces (and training faces, for scale): z from 8 glyphs, then 64 other glyphs of the face."""
    glyphs, refs = unpack_bits(data.bits).astype(np.float32), unpack_bits(data.reference).astype(np.float32)
    report: dict[str, Any] = {}
    means, logvars = [], []
    for f, face in enumerate(data.faces):
        rows = rng.permutation(np.flatnonzero(data.face == f))[:72]
        shown, hidden = rows[:8], rows[8:]
        pair = torch.from_numpy(np.stack([glyphs[shown], refs[data.char[shown]]], 1))[None].to(model.device)
        mean, logvar = model.net.style(pair)
        means.append(mean)
        logvars.append(logvar)
        text = [data.charset[c] for c in data.char[hidden]]
        truth = glyphs[hidden]
        encoded = model.write(text, mean[0])[:, 0].cpu().numpy()
        average = model.write(text, torch.zeros_like(mean[0]))[:, 0].cpu().numpy()
        report[face] = {"held_out": bool(data.held_out_face[f]), "glyphs": len(hidden),
                        "l1": round(float(np.abs(encoded - truth).mean()), 4), "ssim": round(_ssim(encoded, truth), 4),
                        "l1_average_hand": round(float(np.abs(average - truth).mean()), 4),
                        "ssim_average_hand": round(_ssim(average, truth), 4)}
    held = [r for r in report.values() if r["held_out"]]
    trained = [r for r in report.values() if not r["held_out"]]
    kl = kl_per_dim(torch.cat(means), torch.cat(logvars)).cpu().numpy()
    summary = {name: {k: round(float(np.mean([r[k] for r in rs])), 4) for k in ("l1", "ssim", "l1_average_hand", "ssim_average_hand")}
               for name, rs in (("held_out_faces", held), ("training_faces", trained)) if rs}
    return {**summary, "per_face": report, "kl_per_dim": [round(float(v), 3) for v in kl],
            "active_dims_over_0.1_nats": int((kl > 0.1).sum()), "kl_total_nats": round(float(kl.sum()), 2)}


def save_images(model: HandwritingModel, out: Path) -> list[str]:
    """Prior samples (eight hands), a sentence in five hands, and a morph, for looking at."""
    out.mkdir(parents=True, exist_ok=True)
    sample = "永和九年，岁在癸丑。Ink 2026"
    prior = write(model, [Job("doodle", {"text": sample, "seed": s, "ink": "black"}) for s in range(8)])
    _stack(prior).save(out / "prior-eight-hands.png")
    sentence = "春眠不觉晓，处处闻啼鸟。| Spring sleep knows no dawn."
    _stack(write(model, [Job("doodle", {"text": sentence, "seed": s}) for s in range(100, 105)])).save(out / "sentence-five-hands.png")
    task = Doodle()
    job = Job("doodle", {"text": sentence, "seed": 100, "seed_b": 101, "mode": "morph", "frames": 16})
    item = task.prepare(job, None)
    gif = task.finish(job, item, task.run(model, [item], RunContext(model.device))[0]).files[0].data
    (out / "morph.gif").write_bytes(gif)
    with Image.open(io.BytesIO(gif)) as animation:
        animation.seek(animation.n_frames // 4)  # half way from one hand to the other
        animation.convert("RGB").save(out / "morph-halfway.png")
    return sorted(p.name for p in out.iterdir())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m research.handwriting.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(".data/glyphs.npz"), help="packed glyphs (built if missing)")
    parser.add_argument("--seeds", type=int, default=12, help="hands per sentence (default 12)")
    parser.add_argument("--neatness", type=float, default=NEATNESS.default, help=NEATNESS.help())
    parser.add_argument("--skip", default="", help="comma-separated parts to leave out: ocr, reconstruction")
    parser.add_argument("--images", type=Path, help="also save sample pictures here")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if not args.data.exists():
        from research.handwriting.data import pack

        pack(args.data, args.data.parent / "fonts")
    torch.manual_seed(0)
    model = load(args.device)
    data = Packed.load(args.data)
    seeds = list(range(1, args.seeds + 1))
    rng = np.random.default_rng(2026)
    skip = set(args.skip.split(",")) - {""}
    report: dict[str, Any] = {"seeds": seeds, "neatness": args.neatness, "temperature": round(temperature(args.neatness), 3)}
    if args.images is not None:
        args.images.mkdir(parents=True, exist_ok=True)
    if "ocr" not in skip:
        report["tesseract"] = tesseract_version()
        report["ocr"] = legibility(model, seeds, args.neatness, args.images)
        print(json.dumps({"ocr": report["ocr"]}, ensure_ascii=False), file=sys.stderr, flush=True)
    report["diversity"] = diversity(model, data, list(range(1, 9)), args.neatness, rng)
    report["consistency"] = consistency(model, data, list(range(1, 9)), args.neatness, rng)
    if "reconstruction" not in skip:
        report["reconstruction"] = reconstruction(model, data, rng)
    if args.images is not None:
        report["images"] = save_images(model, args.images)
    print(json.dumps(report, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
