"""The deblurring benchmark's mechanics: metrics, seeded conditions, baselines, scoring region, report."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from models.restore.net import KernelDeblurNet
from models.weights import save_half
from research.restore import evaluate as ev
from research.restore.degrade import blur

DELTA = np.pad(np.ones((1, 1), np.float32), 1)


def smooth_image(h: int = 96, w: int = 96) -> np.ndarray:
    """Gentle gradients: a sharp image that no sensible restorer should change much."""
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    return np.stack([0.3 + 0.4 * x, 0.5 + 0.2 * np.sin(3 * y), 0.2 + 0.5 * x * y], axis=2).astype(np.float32)


def textured_image(h: int = 96, w: int = 96, seed: int = 0) -> np.ndarray:
    """Edges and blobs, so blur costs many dB and deconvolution has something to win back."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0.1, 0.9, (h // 8, w // 8, 3)).astype(np.float32)
    blocks = np.kron(coarse, np.ones((8, 8, 1), np.float32))
    return np.clip(0.7 * blocks + 0.3 * smooth_image(h, w), 0, 1)


def test_metrics_of_identical_and_noisy_images():
    image = smooth_image()
    assert ev.psnr(image, image) == ev.PSNR_CAP_DB
    assert ev.ssim(image, image) == pytest.approx(1.0, abs=1e-6)
    noisy = image + 0.01 * np.random.default_rng(0).standard_normal(image.shape).astype(np.float32)
    assert ev.psnr(noisy, image) == pytest.approx(40.0, abs=0.2)
    assert ev.ssim(noisy, image) < 0.99


def test_conditions_are_seeded_and_add_the_stated_noise():
    sharp = textured_image()
    motion = ev.Condition("motion", 8)
    kernel, degraded = ev.degrade(sharp, motion, image_index=1, seed=5)
    again_kernel, again = ev.degrade(sharp, motion, image_index=1, seed=5)
    assert kernel.tobytes() == again_kernel.tobytes() and degraded.tobytes() == again.tobytes()
    other_kernel, _ = ev.degrade(sharp, motion, image_index=2, seed=5)
    assert other_kernel.tobytes() != kernel.tobytes()
    _, reseeded = ev.degrade(sharp, motion, image_index=1, seed=6)
    assert reseeded.tobytes() != degraded.tobytes()

    grey = np.full((64, 64, 3), 0.5, np.float32)
    kernel, degraded = ev.degrade(grey, ev.Condition("defocus", 3), image_index=0)
    noise = degraded - blur(torch.from_numpy(grey).permute(2, 0, 1)[None], kernel)[0].permute(1, 2, 0).numpy()
    assert noise.std() == pytest.approx(ev.NOISE_SIGMA, rel=0.05)


def test_the_benchmark_covers_three_strengths_of_each_kind():
    kinds = [c.kind for c in ev.CONDITIONS]
    assert {k: kinds.count(k) for k in kinds} == {"motion": 3, "defocus": 3, "gaussian": 3}
    assert len({c.name for c in ev.CONDITIONS}) == len(ev.CONDITIONS)


@pytest.mark.parametrize("candidates", [ev.unsharp_candidates, ev.wiener_candidates, ev.richardson_lucy_candidates])
def test_classical_baselines_leave_a_sharp_image_alone_under_a_delta_kernel(candidates):
    sharp = smooth_image()
    best = max(ev.psnr(ev.interior(out, 16), ev.interior(sharp, 16)) for out in candidates(sharp, DELTA).values())
    assert best > 40


@pytest.mark.parametrize("candidates", [ev.wiener_candidates, ev.richardson_lucy_candidates])
def test_non_blind_baselines_undo_the_true_motion_kernel(candidates):
    """Catches a flipped or shifted kernel: deconvolving with it would not beat the input."""
    sharp = textured_image()
    kernel, degraded = ev.degrade(sharp, ev.Condition("motion", 8), image_index=0)
    margin = ev.border(kernel)
    score = lambda image: ev.psnr(ev.interior(image, margin), ev.interior(sharp, margin))  # noqa: E731
    assert max(score(out) for out in candidates(degraded, kernel).values()) > score(degraded) + 2


def test_every_method_is_scored_on_the_same_interior():
    sharp = smooth_image()
    margin = ev.border(DELTA)
    junk_border = sharp.copy()
    junk_border[:margin] = 0
    junk_border[:, -margin:] = 1
    junk_inside = sharp.copy()
    junk_inside[margin, margin] = 0
    methods = [ev.Method("a", "test", lambda d, k: {"": junk_border}),
               ev.Method("b", "test", lambda d, k: {"x": junk_inside, "y": junk_border})]
    scores = ev.evaluate_case(sharp, sharp, DELTA, methods)
    assert scores["a"].psnr == ev.PSNR_CAP_DB and scores["a"].ssim == pytest.approx(1.0)
    assert scores["b"].setting == "y"  # the oracle keeps the best candidate, judged on the interior
    only_inside = ev.evaluate_case(sharp, sharp, DELTA, [ev.Method("c", "test", lambda d, k: {"": junk_inside})])
    assert only_inside["c"].psnr < 60


def tiny_report() -> dict:
    torch.manual_seed(0)
    images = {"blocks": textured_image(80, 96)}
    return ev.evaluate(images, KernelDeblurNet(), conditions=(ev.Condition("gaussian", 1.5),),
                       unseen=(ev.Condition("tremor", 9),))


def test_a_tiny_run_reports_every_field():
    report = tiny_report()
    json.dumps(report, allow_nan=False)
    names = ["blurred", "ours", "unsharp", "wiener", "richardson_lucy"]
    assert list(report["methods"]) == names
    assert set(report["machine"]) >= {"torch", "torch_threads", "cpus"}
    assert report["settings"]["images"] == {"blocks": [80, 96]} and "oracle" in report["settings"]["oracle_tuning"]
    for section in (report["conditions"]["gaussian-1.5"], report["kinds"]["gaussian"], report["overall"]):
        assert list(section) == names
        assert all(0 < s["psnr"] <= ev.PSNR_CAP_DB and -1 <= s["ssim"] <= 1 for s in section.values())
    assert set(report["seconds"]) == set(names) and report["seconds"]["ours"] > 0
    assert set(report["oracle_choices"]) == {"unsharp", "wiener", "richardson_lucy"}
    summary, overall = report["summary"], report["overall"]
    assert summary["ours_psnr_gain_over_blurred_db"] == pytest.approx(overall["ours"]["psnr"] - overall["blurred"]["psnr"], abs=2e-3)
    assert summary["ours_minus_best_blind_classical_db"] == pytest.approx(overall["ours"]["psnr"] - overall["unsharp"]["psnr"], abs=2e-3)
    assert summary["best_nonblind"] in ("wiener", "richardson_lucy")
    assert summary["ours_minus_best_nonblind_db"] <= overall["ours"]["psnr"] - min(overall[m]["psnr"] for m in ("wiener", "richardson_lucy"))
    assert {"ours_ssim_gain_over_blurred", "ours_ssim_minus_best_blind_classical", "ours_ssim_minus_best_nonblind"} <= set(summary)
    targets = summary["targets"]
    assert set(targets) == {"psnr_gain_over_blurred_at_least_3db", "psnr_at_least_1db_above_best_blind_classical",
                            "ssim_up_over_blurred"}
    assert targets["psnr_gain_over_blurred_at_least_3db"] == (summary["ours_psnr_gain_over_blurred_db"] >= 3)
    unseen = report["unseen_shake"]
    assert list(unseen["conditions"]) == ["tremor-9"] and list(unseen["overall"]) == names
    assert unseen["overall"] != report["overall"] and set(unseen["summary"]) == set(summary)
    assert [c["name"] for c in report["settings"]["unseen_conditions"]] == ["tremor-9"]
    table = ev.markdown(report)
    assert "| gaussian-1.5 |" in table and "| **overall** |" in table and "| unseen tremor-9 |" in table


def test_weights_load_from_a_checkpoint_or_safetensors(tmp_path):
    torch.manual_seed(1)
    net = KernelDeblurNet()
    torch.save({"ema": net.state_dict(), "step": 7}, tmp_path / "checkpoint.pt")
    save_half(net, tmp_path / "deblur.safetensors")
    reference = net.state_dict()
    for file, tolerance in (("checkpoint.pt", 0.0), ("deblur.safetensors", 1e-3)):
        loaded = ev.load_net(tmp_path / file).state_dict()
        assert loaded.keys() == reference.keys()
        assert max(np.abs(loaded[k].numpy() - reference[k].numpy()).max() for k in reference) <= tolerance


def test_the_command_line_prints_json(tmp_path, monkeypatch, capsys):
    held_out = tmp_path / "data" / "held_out"
    held_out.mkdir(parents=True)
    Image.fromarray((textured_image(128, 160) * 255).astype(np.uint8)).save(held_out / "blocks.png")
    torch.save({"ema": KernelDeblurNet().state_dict()}, tmp_path / "checkpoint.pt")
    monkeypatch.setattr(ev, "CONDITIONS", (ev.Condition("defocus", 2),))
    monkeypatch.setattr(ev, "UNSEEN_CONDITIONS", (ev.Condition("tremor", 9),))
    monkeypatch.setattr(sys, "argv", ["evaluate", "--weights", str(tmp_path / "checkpoint.pt"), "--data-dir",
                                      str(tmp_path / "data"), "--max-side", "96", "--markdown",
                                      "--out", str(tmp_path / "report.json")])
    ev.main()
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert report == json.loads((tmp_path / "report.json").read_text())
    assert report["settings"]["images"] == {"blocks": [77, 96]} and report["settings"]["max_side"] == 96
    assert list(report["conditions"]) == ["defocus-2"] and "| **overall** |" in err
    assert list(report["unseen_shake"]["conditions"]) == ["tremor-9"]
