"""KernelDeblurNet's mechanics: kernel estimation, the Fourier mathematics, the shake families, the net's shapes and tiles, training."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import photo_array
from models import samples
from models.restore import fourier, kernel
from models.restore.net import KernelDeblurNet, UNet, from_state
from models.restore.tiling import restore_tiled
from models.weights import save_half
from research.restore import degrade, kernel_bench, photos, train
from research.restore import evaluate as ev


@pytest.fixture(scope="module")
def coffee() -> torch.Tensor:
    """A 256 px crop of a real photo, (1, 3, H, W) in 0..1."""
    return torch.from_numpy(photo_array("coffee")[:256, 100:356].copy()).permute(2, 0, 1)[None].float() / 255


def psnr(a: torch.Tensor, b: torch.Tensor, border: int = 24) -> float:
    h, w = a.shape[-2:]
    mse = ((a.clamp(0, 1) - b) ** 2)[..., border:h - border, border:w - border].mean()
    return float(10 * torch.log10(1 / mse))


def shake(length: float = 15.0, seed: int = 0) -> torch.Tensor:
    kernel = degrade.motion_kernel(np.random.default_rng(seed), length)
    return torch.from_numpy(degrade.on_grid(kernel, fourier.KERNEL_SIZE))[None]


def test_wiener_with_the_true_kernel_undoes_the_blur(coffee):
    kernel = shake()
    blurred = degrade.blur(coffee, kernel[0].numpy())
    restored = fourier.wiener(blurred, kernel, torch.tensor([1e-3]))
    assert restored.shape == coffee.shape
    assert psnr(restored, coffee) > psnr(blurred, coffee) + 5  # measured 23.4 -> 30.2 dB
    flipped = fourier.wiener(blurred, kernel.flip(-1, -2), torch.tensor([1e-3]))
    assert psnr(flipped, coffee) < psnr(restored, coffee) - 3  # the convolution's orientation matters


def test_wiener_with_no_blur_keeps_the_image(coffee):
    identity = torch.from_numpy(degrade.on_grid(np.ones((1, 1), np.float32), fourier.KERNEL_SIZE))[None]
    assert psnr(fourier.wiener(coffee, identity, torch.tensor([1e-6])), coffee, border=0) > 50


def test_the_kernel_is_found_from_the_blurred_photo_alone():
    """A real photo at 400x512 (one /fix tile), six 15 px shakes and benchmark noise: most estimates
    are near the truth, and deconvolving with them wins most of what the true kernel wins."""
    sharp = torch.from_numpy(photo_array("coffee")[:400, :512].copy()).permute(2, 0, 1)[None].float() / 255
    errors, gains, ceilings = [], [], []
    for seed in range(6):
        true_kernel = shake(seed=seed)
        blurred = degrade.blur(sharp, true_kernel[0].numpy())
        blurred = (blurred + 0.01 * torch.randn(blurred.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
        found = kernel.estimate(blurred.mean(1, keepdim=True))
        assert found.shape == true_kernel.shape and float(found.sum()) == pytest.approx(1.0, abs=1e-5)
        errors.append(float((found - true_kernel).abs().sum()))
        before = psnr(blurred, sharp)
        gains.append(psnr(fourier.wiener(blurred, found, torch.tensor([0.01])), sharp) - before)
        ceilings.append(psnr(fourier.wiener(blurred, true_kernel, torch.tensor([0.01])), sharp) - before)
    # measured: errors 1.13 2.05 0.54 0.68 0.70 0.98 ("no blur" scores about 1.9, a kernel sharing
    # nothing with the truth 2); gains +1.2 -0.6 +3.3 +2.3 +4.4 +2.9 dB where the true kernel gives +3.6 to +6.7
    assert sum(e < 1.0 for e in errors) >= 4
    assert np.median(gains) >= 2.0 and np.median(ceilings) >= 4.0


@pytest.mark.parametrize("name", samples.PHOTOS)
def test_a_sharp_photo_gets_no_blur(name):
    """Deconvolving a sharp photo by whatever the search found would not make its gradients sparser,
    so the estimate is dropped: the kernel is a single point and /fix's deconvolution changes nothing."""
    sharp = torch.from_numpy(photo_array(name)[:400, :512].copy()).permute(2, 0, 1)[None].float() / 255
    point = torch.zeros(1, fourier.KERNEL_SIZE, fourier.KERNEL_SIZE)
    point[0, fourier.KERNEL_SIZE // 2, fourier.KERNEL_SIZE // 2] = 1
    assert torch.equal(kernel.estimate(sharp.mean(1, keepdim=True)), point)


def test_kernels_are_centred_exactly():
    off = torch.zeros(1, 31, 31)
    off[0, 15, 17], off[0, 16, 18] = 0.5, 0.5  # centre of mass at (+0.5, +2.5)
    centred = kernel.centre_exactly(off)
    offsets = torch.arange(31.0) - 15
    assert float(centred.sum()) == pytest.approx(1.0, abs=1e-5)
    assert float((centred.sum(-1) * offsets).sum()) == pytest.approx(0.0, abs=1e-4)
    assert float((centred.sum(-2) * offsets).sum()) == pytest.approx(0.0, abs=1e-4)


def test_training_blur_by_fft_matches_direct_convolution(coffee):
    kernels = torch.from_numpy(degrade.sample_training_kernels(np.random.default_rng(3), 1, fourier.KERNEL_SIZE)[0])
    direct = degrade.blur(coffee, kernels[0].numpy(), padding="valid")
    by_fft = train.blur_valid(coffee, kernels)
    assert by_fft.shape == direct.shape
    assert float((by_fft - direct).abs().max()) < 1e-4  # float32 rounding of sums of ~1000 terms


@pytest.mark.parametrize("family", [*degrade.TRAINING_SHAKE, degrade.shake_tremor])
def test_every_shake_family_gives_centred_kernels_of_the_asked_length(family):
    points, exposure = family(np.random.default_rng(1), 16)
    lengths = np.linspace(3, 24, 16)
    kernels = degrade.splat_trajectories(points, exposure, lengths, fourier.KERNEL_SIZE)
    ys, xs = np.mgrid[0:fourier.KERNEL_SIZE, 0:fourier.KERNEL_SIZE]
    centre = fourier.KERNEL_SIZE // 2
    assert np.allclose(kernels.sum((1, 2)), 1, atol=1e-5) and (kernels >= 0).all()
    assert np.abs((kernels * ys).sum((1, 2)) - centre).max() < 1e-3 and np.abs((kernels * xs).sum((1, 2)) - centre).max() < 1e-3
    spans = [max(np.ptp(np.nonzero(k.sum(a))[0]) for a in (0, 1)) for k in kernels]
    spans = np.array(spans)
    assert np.all(spans <= lengths + 2)  # bilinear splatting adds at most a pixel each end
    short = lengths <= 16  # longer paths may be shrunk to fit the grid around their centre of exposure
    assert np.all(np.abs(spans[short] - lengths[short]) <= 2)


def test_the_unseen_family_is_not_trained_on():
    kinds = set(degrade.sample_training_kernels(np.random.default_rng(0), 400, fourier.KERNEL_SIZE)[1])
    assert {f.__name__.removeprefix("shake_") for f in degrade.TRAINING_SHAKE} <= kinds
    assert "tremor" not in kinds and degrade.shake_tremor not in degrade.TRAINING_SHAKE


def test_the_net_keeps_any_shape_and_tiles_blend(coffee):
    torch.manual_seed(0)
    net = KernelDeblurNet().eval()
    with torch.inference_mode():
        for shape in ((1, 3, 70, 90), (2, 3, 64, 64)):
            assert net(torch.rand(shape)).shape == shape
        (tiled,) = restore_tiled(net, [coffee[0]], tile=128, overlap=32, batch=4)
    assert tiled.shape == coffee.shape[1:] and torch.isfinite(tiled).all()


def test_a_run_with_fewer_middle_blocks_loads_and_fine_tunes_exactly_as_it_was(tmp_path):
    """The first two runs' weights had four middle blocks; the ones added since start as identities."""
    torch.manual_seed(4)
    earlier = KernelDeblurNet()
    earlier.refine = UNet(9, 3, 16, (1, 1, 2, 4), 4, (1, 1, 1, 1))
    for p in earlier.parameters():
        p.data.normal_(0, 0.05)
    save_half(earlier, tmp_path / "deblur.safetensors")
    earlier.load_state_dict({k: v.float() for k, v in load_file(str(tmp_path / "deblur.safetensors")).items()})
    net = KernelDeblurNet()
    assert len(net.refine.middle) > len(earlier.refine.middle)
    net.load_state_dict(train.initial_state(tmp_path / "deblur.safetensors"))
    loaded = ev.load_net(tmp_path / "deblur.safetensors")
    image, deconvolved = torch.rand(2, 3, 64, 64), torch.rand(2, 6, 64, 64)
    with torch.no_grad():
        expected = earlier.correct(image, deconvolved)
        assert torch.allclose(net.correct(image, deconvolved), expected, atol=1e-5)
        assert torch.allclose(loaded.correct(image, deconvolved), expected, atol=1e-5)


def test_weights_missing_more_than_middle_blocks_are_refused(tmp_path):
    state = KernelDeblurNet().state_dict()
    del state["refine.intro.weight"]
    with pytest.raises(ValueError, match="missing"):
        from_state(state)


def test_evaluate_loads_a_run_or_the_shipped_weights(tmp_path):
    torch.manual_seed(2)
    net = KernelDeblurNet()
    save_half(net, tmp_path / "deblur.safetensors")
    for loaded in (ev.load_net(tmp_path / "deblur.safetensors"), ev.load_net(None)):
        assert isinstance(loaded, KernelDeblurNet) and not loaded.training
        assert loaded.state_dict().keys() == net.state_dict().keys()


def test_training_writes_exactly_its_three_files(tmp_path, monkeypatch):
    """The real command line, for two steps on a tiny packed photo set, a few small regions, resumable."""
    rng = np.random.default_rng(0)
    for split in ("train", "held_out"):
        (tmp_path / "photos" / split).mkdir(parents=True)
        for i in range(2):
            blocks = np.kron(rng.uniform(0, 255, (40, 40, 3)), np.ones((8, 8, 1))).astype(np.uint8)
            Image.fromarray(blocks).save(tmp_path / "photos" / split / f"p{i}.png")
    (tmp_path / "photos" / ".complete").touch()
    packed = tmp_path / "photos.npz"
    photos.pack(tmp_path / "photos", packed)
    out = tmp_path / "run"
    monkeypatch.setattr(sys, "argv", ["train", "--device", "cpu", "--minutes", "6", "--steps", "2", "--batch", "2",
                                      "--crop", "64", "--regions", "3", "--region", "96", "--workers", "1",
                                      "--data", str(packed), "--out", str(out), "--checkpoint", str(tmp_path / "ckpt.pt")])
    train.main()
    assert len(list(tmp_path.glob("photos-regions-1234-3-96-*.pt"))) == 1  # made once, reused by the next run
    assert sorted(p.name for p in out.iterdir()) == ["deblur.safetensors", "loss_curve.csv", "training.json"]
    record = json.loads((out / "training.json").read_text())
    assert record["steps_reached"] == 2 and record["seed"] == train.Recipe.seed and record["device"]["type"] == "cpu"
    assert "gain_tremor" in record["final"]
    assert record["regions"]["count"] == 3 and set(record["regions"]["validation_kernel_l1"]) == set(train.VALIDATION_KINDS)
    assert isinstance(ev.load_net(out / "deblur.safetensors"), KernelDeblurNet)
    again = tmp_path / "again"  # a second stage: on from the first run's weights, on other regions
    monkeypatch.setattr(sys, "argv", [*sys.argv[:sys.argv.index("--out")], "--out", str(again), "--seed", "7",
                                      "--init", str(out / "deblur.safetensors")])
    train.main()
    record = json.loads((again / "training.json").read_text())
    assert record["seed"] == 7 and record["init"]["what"] == "an earlier KernelDeblurNet run's weights"
    assert len(list(tmp_path.glob("photos-regions-7-3-96-*.pt"))) == 1


def test_the_kernel_benchmark_reports_each_kind(monkeypatch):
    monkeypatch.setattr(ev, "CONDITIONS", (ev.Condition("motion", 8), ev.Condition("defocus", 2)))
    monkeypatch.setattr(ev, "UNSEEN_CONDITIONS", (ev.Condition("tremor", 9),))
    sharp = photo_array("coffee")[:200, :240].astype(np.float32) / 255
    result = kernel_bench.report({"coffee": sharp}, crop=160)
    assert set(result["kinds"]) == {"motion", "defocus", "tremor"} and result["crop"] == 160
    for scores in result["kinds"].values():
        assert 0 <= scores["kernel_l1"] <= 2.01
        assert scores["wiener_gain_true_kernel_db"] > 0  # the true kernel always helps: the scoring is sound
    json.dumps(result, allow_nan=False)
