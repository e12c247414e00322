"""Train the handwriting VAE on the packed glyphs, unchanged on CPU or CUDA.

    python -m research.handwriting.train --data .data/glyphs.npz --device cuda --minutes 6 --out DIR

stops at --steps or --minutes, whichever comes first, and writes exactly three files to DIR:
handwriting.safetensors (fp16 EMA weights), training.json (recipe, data, timings, losses,
evaluation, KL per dimension) and loss_curve.csv. `--checkpoint PATH` keeps a resumable state
elsewhere (`--resume PATH` continues from it). Needs only torch, numpy and safetensors.

One step draws `hands` hands: a training face, K characters it covers, and one random
distortion of the face (augment.py). The loss is the ELBO of the K glyphs under one z:
sum of K Bernoulli reconstructions + beta * KL, with free bits per latent dimension and beta
warmed up from 0. Learning rate and beta follow `progress`, the larger of the step and
time fractions, so a short CPU run and a GPU run go through the same schedule.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import platform
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from models.handwriting.charset import is_ideograph
from models.handwriting.glyphs import unpack_bits
from models.handwriting.model import Config, GlyphVAE, free_bits_kl, kl_per_dim
from models.weights import save_half
from research.handwriting import augment
from research.handwriting.data import Packed

WEIGHTS_NAME = "handwriting.safetensors"


@dataclass(frozen=True)
class Recipe:
    seed: int = 0
    steps: int = 200_000
    minutes: float = 90.0
    hands: int = 128  # hands per step
    per_hand: int = 8  # glyphs per hand (K)
    lr: float = 2e-3
    min_lr: float = 2e-5
    warmup: float = 0.02  # fraction of the run
    kl_warmup: float = 0.25  # beta goes 0 -> 1 over this fraction of the run
    free_bits: float = 0.25  # nats per latent dimension
    ema_decay: float = 0.998
    grad_clip: float = 1.0
    chinese_hands: float = 0.7  # share of hands drawn from faces with ideographs
    latin_in_chinese: float = 0.2  # share of a Chinese face's glyphs that are not ideographs


class HandSampler:
    """Random hands as index tensors, entirely on the device (no per-sample Python)."""

    def __init__(self, data: Packed, device: torch.device, k: int, recipe: Recipe) -> None:
        self.k = k
        self.glyphs = torch.from_numpy(unpack_bits(data.bits)).to(device)
        self.refs = torch.from_numpy(unpack_bits(data.reference)).to(device)
        self.char = torch.from_numpy(data.char.astype(np.int64)).to(device)
        ideo = np.array([is_ideograph(c) for c in data.charset])
        train = ~data.held_out_face[data.face] & ~data.held_out_char[data.char]
        self.faces = [f for f in range(len(data.faces)) if not data.held_out_face[f]]
        rows = [[np.flatnonzero(train & (data.face == f) & (ideo[data.char] == cls)) for cls in (False, True)]
                for f in self.faces]
        width = max(len(r) for pair in rows for r in pair)
        table = np.zeros((len(self.faces), 2, width), dtype=np.int64)
        lens = np.zeros((len(self.faces), 2), dtype=np.int64)
        for i, pair in enumerate(rows):
            for cls, r in enumerate(pair):
                table[i, cls, :len(r)], lens[i, cls] = r, len(r)
        self.table, self.lens = torch.from_numpy(table).to(device), torch.from_numpy(lens).to(device)
        chinese = lens[:, 1] > 0
        weights = np.where(chinese, recipe.chinese_hands / max(chinese.sum(), 1),
                           (1 - recipe.chinese_hands) / max((~chinese).sum(), 1))
        self.face_p = torch.tensor(weights / weights.sum(), dtype=torch.float32, device=device)
        self.p_ideo = torch.tensor(np.where(chinese, 1 - recipe.latin_in_chinese, 0.0), dtype=torch.float32, device=device)

    def rows(self, b: int, g: torch.Generator) -> torch.Tensor:
        """[b, K] row indices: b hands, each K glyphs of one training face."""
        face = torch.multinomial(self.face_p, b, replacement=True, generator=g)
        dev = face.device
        cls = (torch.rand(b, self.k, generator=g, device=dev) < self.p_ideo[face, None]).long()
        lens = self.lens[face[:, None], cls]
        pick = (torch.rand(b, self.k, generator=g, device=dev) * lens).long()
        return self.table[face[:, None], cls, pick]

    def batch(self, b: int, g: torch.Generator, augmented: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(glyphs, references), both [b, K, 64, 64] float in 0..1."""
        rows = self.rows(b, g)
        glyphs = self.glyphs[rows].float()
        if augmented:
            glyphs = augment.hands(glyphs, g)
        return glyphs, self.refs[self.char[rows]].float()


def progress(step: int, elapsed: float, recipe: Recipe) -> float:
    return min(1.0, max(step / recipe.steps, elapsed / (60 * recipe.minutes)))


def learning_rate(p: float, r: Recipe) -> float:
    if p < r.warmup:
        return r.lr * p / r.warmup
    return r.min_lr + 0.5 * (r.lr - r.min_lr) * (1 + math.cos(math.pi * (p - r.warmup) / (1 - r.warmup)))


def elbo_terms(net: GlyphVAE, glyphs: torch.Tensor, refs: torch.Tensor, g: torch.Generator,
               autocast: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(reconstruction nats per glyph, KL nats per dimension [z]) for a batch of hands."""
    eps = torch.randn(glyphs.shape[0], net.cfg.z_dim, generator=g, device=glyphs.device)
    with torch.autocast(glyphs.device.type, dtype=torch.bfloat16, enabled=autocast):
        logits, mean, logvar = net(glyphs, refs, eps)
    recon = F.binary_cross_entropy_with_logits(logits.float(), glyphs, reduction="none").sum((2, 3)).mean()
    return recon, kl_per_dim(mean.float(), logvar.float())


@torch.no_grad()
def evaluate(net: GlyphVAE, data: Packed, device: torch.device, k: int, seed: int = 7) -> dict:
    """Held-out faces, held-out characters, and training glyphs, undistorted: reconstruction
    BCE and L1 (posterior mean z from the same K glyphs), and the L1 between the model's glyph
    and the reference rendering next to the L1 between the true glyph and the reference."""
    rng = np.random.default_rng(seed)
    glyphs_all = unpack_bits(data.bits)
    refs_all = unpack_bits(data.reference)
    held_char = data.held_out_char[data.char]
    groups = {
        "held_out_faces": data.held_out_face[data.face],
        "held_out_chars": ~data.held_out_face[data.face] & held_char,
        "train": ~data.held_out_face[data.face] & ~held_char,
    }
    report = {}
    for name, mask in groups.items():
        if not mask.any():
            continue
        hands = []
        for f in np.unique(data.face[mask]):
            rows = np.flatnonzero(mask & (data.face == f))
            hands += [rng.choice(rows, k, replace=len(rows) < k) for _ in range(8)]
        rows = np.stack(hands)
        x = torch.from_numpy(glyphs_all[rows]).float().to(device)
        ref = torch.from_numpy(refs_all[data.char[rows]]).float().to(device)
        mean, _ = net.style(torch.stack([x, ref], 2))
        b, kk = rows.shape
        logits = net.decode(ref.reshape(b * kk, 1, 64, 64), mean.repeat_interleave(kk, 0)).view(b, kk, 64, 64)
        ink = torch.sigmoid(logits)
        report[name] = {
            "hands": b,
            "bce_per_glyph": float(F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum((2, 3)).mean()),
            "l1_to_truth": float((ink - x).abs().mean()),
            "l1_output_to_reference": float((ink - ref).abs().mean()),
            "l1_truth_to_reference": float((x - ref).abs().mean()),
        }
    return report


@torch.no_grad()
def prior_spread(net: GlyphVAE, data: Packed, device: torch.device, seeds: int = 8, seed: int = 11) -> dict:
    """How different prior hands are: the same characters written with `seeds` z ~ N(0, I),
    L1 between seeds and to the reference rendering, next to the L1 between the same character
    in two different training faces (the spread real fonts have)."""
    rng = np.random.default_rng(seed)
    ideo = np.array([is_ideograph(c) for c in data.charset])
    chars = np.concatenate([rng.choice(np.flatnonzero(ideo), 32, replace=False),
                            rng.choice(np.flatnonzero(~ideo), 16, replace=False)])
    refs = torch.from_numpy(unpack_bits(data.reference[chars])).float().to(device).unsqueeze(1)
    z = torch.randn(seeds, net.cfg.z_dim, generator=torch.Generator().manual_seed(seed)).to(device)
    ink = torch.stack([torch.sigmoid(net.decode(refs, zi.expand(len(chars), -1))) for zi in z])  # [S, C, 1, 64, 64]
    between_seeds = (ink[:, None] - ink[None]).abs().mean((2, 3, 4, 5)).sum() / (seeds * (seeds - 1))
    glyphs = unpack_bits(data.bits)
    train = ~data.held_out_face[data.face]
    pairs = []
    for c in chars:
        rows = np.flatnonzero(train & (data.char == c))
        if len(rows) >= 2:
            a, b = rng.choice(rows, 2, replace=False)
            pairs.append(np.abs(glyphs[a].astype(np.float32) - glyphs[b]).mean())
    return {"characters": len(chars), "seeds": seeds,
            "l1_between_seeds": float(between_seeds),
            "l1_to_reference": float((ink - refs[None]).abs().mean()),
            "l1_between_training_faces": float(np.mean(pairs)) if pairs else None}


def _ema_update(ema: GlyphVAE, net: GlyphVAE, decay: float) -> None:
    with torch.no_grad():
        torch._foreach_lerp_(list(ema.parameters()), list(net.parameters()), 1 - decay)


def train(data_file: Path, out: Path, recipe: Recipe, device: torch.device, checkpoint: Path | None,
          resume: Path | None, command: str) -> None:
    torch.manual_seed(recipe.seed)
    data = Packed.load(data_file)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    sampler = HandSampler(data, device, recipe.per_hand, recipe)
    net = GlyphVAE(Config()).to(device)
    if cuda:
        net.to(memory_format=torch.channels_last)
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=recipe.lr, weight_decay=0.0, betas=(0.9, 0.99), fused=cuda)
    g = torch.Generator(device=device).manual_seed(recipe.seed)
    step, elapsed, curve = 0, 0.0, []
    if resume is not None:
        state = torch.load(resume, map_location=device, weights_only=False)
        net.load_state_dict(state["net"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        g.set_state(state["rng"].cpu())
        step, elapsed, curve = state["step"], state["elapsed"], state["curve"]
    params = sum(p.numel() for p in net.parameters())
    print(f"{len(data.bits)} glyphs, {len(sampler.faces)} training faces, {params / 1e6:.2f} M parameters, "
          f"{recipe.hands}x{recipe.per_hand} glyphs per step on {device}", flush=True)
    start = time.perf_counter() - elapsed
    last_print = last_ckpt = time.perf_counter()
    printed_step = step
    sums = torch.zeros(3, device=device)
    while True:
        elapsed = time.perf_counter() - start
        p = progress(step, elapsed, recipe)
        if p >= 1.0:
            break
        lr, beta = learning_rate(p, recipe), min(1.0, p / recipe.kl_warmup)
        for group in opt.param_groups:
            group["lr"] = lr
        glyphs, refs = sampler.batch(recipe.hands, g)
        recon, kl_dims = elbo_terms(net, glyphs, refs, g, autocast=cuda)
        kl = kl_dims.sum()
        # per-hand ELBO (K glyphs share one z), scaled per pixel so the learning rate is size-free
        loss = (recipe.per_hand * recon + beta * free_bits_kl(kl_dims, recipe.free_bits)) / (recipe.per_hand * 4096)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), recipe.grad_clip)
        opt.step()
        _ema_update(ema, net, recipe.ema_decay if step > 200 else 0.0)
        step += 1
        sums += torch.stack([loss.detach(), recon.detach(), kl.detach()])
        now = time.perf_counter()
        if now - last_print >= 15 or step == 1:
            n = step - printed_step
            loss_v, recon_v, kl_v = (sums / n).tolist()
            rate = n / (now - last_print) if step > 1 else 0.0
            curve.append({"step": step, "seconds": round(now - start, 1), "loss": round(loss_v, 5),
                          "recon_nats_per_glyph": round(recon_v, 2), "kl_nats_per_hand": round(kl_v, 3),
                          "beta": round(beta, 4), "lr": lr})
            print(f"step {step:6d}  {now - start:6.0f}s  loss {loss_v:.4f}  recon {recon_v:7.1f}  KL {kl_v:6.2f}  "
                  f"beta {beta:.2f}  lr {lr:.2e}  {rate:5.1f} it/s  {rate * recipe.hands * recipe.per_hand:7.0f} glyphs/s",
                  flush=True)
            sums.zero_()
            printed_step, last_print = step, now
        if checkpoint is not None and now - last_ckpt >= 120:
            _save_checkpoint(checkpoint, net, ema, opt, g, step, now - start, curve)
            last_ckpt = now
    elapsed = time.perf_counter() - start
    if checkpoint is not None:
        _save_checkpoint(checkpoint, net, ema, opt, g, step, elapsed, curve)
    _write_outputs(out, ema, data, sampler, recipe, device, step, elapsed, curve, params, command)


def _save_checkpoint(file: Path, net, ema, opt, g, step: int, elapsed: float, curve: list) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"net": net.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "rng": g.get_state(),
                "step": step, "elapsed": elapsed, "curve": curve}, file)


def _write_outputs(out: Path, ema: GlyphVAE, data: Packed, sampler: HandSampler, recipe: Recipe,
                   device: torch.device, step: int, elapsed: float, curve: list, params: int, command: str) -> None:
    ema.eval()
    g = torch.Generator(device=device).manual_seed(recipe.seed + 1)
    with torch.no_grad():
        recon, kl_dims = elbo_terms(ema, *sampler.batch(min(256, 16 * recipe.hands), g), g, autocast=False)
    report = {
        "command": command,
        "recipe": asdict(recipe),
        "model": asdict(Config()),
        "parameters": params,
        "steps": step,
        "seconds": round(elapsed, 1),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "data": {"glyphs": int(len(data.bits)), "faces": data.faces,
                 "held_out_faces": [f for f, h in zip(data.faces, data.held_out_face) if h],
                 "held_out_chars": "".join(c for c, h in zip(data.charset, data.held_out_char) if h),
                 "recipe": data.recipe},
        "final": {"recon_nats_per_glyph": float(recon), "kl_nats_per_hand": float(kl_dims.sum()),
                  "augmented_training_hands": min(256, 16 * recipe.hands)},
        "kl_per_dim": [round(float(v), 4) for v in kl_dims],
        "evaluation": evaluate(ema, data, device, recipe.per_hand),
        "prior_spread": prior_spread(ema, data, device),
        "loss_curve": "loss_curve.csv",
    }
    out.mkdir(parents=True, exist_ok=True)
    save_half(ema, out / WEIGHTS_NAME)
    (out / "training.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    with open(out / "loss_curve.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(curve[0]) if curve else ["step"])
        writer.writeheader()
        writer.writerows(curve)
    print(f"wrote {out}: {step} steps in {elapsed:.0f}s; recon {float(recon):.1f} nats/glyph, "
          f"KL {float(kl_dims.sum()):.2f} nats/hand", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m research.handwriting.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(".data/glyphs.npz"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--checkpoint", type=Path, help="resumable state, written every 2 minutes and at the end")
    parser.add_argument("--resume", type=Path)
    for key, value in asdict(Recipe()).items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=value)
    args = parser.parse_args(argv)
    recipe = Recipe(**{k: getattr(args, k) for k in asdict(Recipe())})
    command = shlex.join(["python", "-m", "research.handwriting.train", *(sys.argv[1:] if argv is None else argv)])
    train(args.data, args.out, recipe, torch.device(args.device), args.checkpoint, args.resume, command)


if __name__ == "__main__":
    main()
