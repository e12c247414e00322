"""WienerDeblurNet's mechanics: the Fourier mathematics, the shake families, the net's shapes and tiles, training."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import photo_array
from models.restore import degrade, fourier, photos, train
from models.restore import evaluate as ev
from models.restore.net import WienerDeblurNet, from_state
from models.restore.tiling import restore_tiled
from models.weights import save_half


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


def test_the_kernel_is_found_from_the_sharp_and_blurred_image(coffee):
    kernel = shake()
    grey = coffee.mean(1, keepdim=True)
    blurred = degrade.blur(grey, kernel[0].numpy())
    found = fourier.clean_kernel(fourier.least_squares_kernel(grey, blurred, 1e-3))
    assert found.shape == kernel.shape and float(found.sum()) == pytest.approx(1.0, abs=1e-5)
    assert float((found - kernel).abs().sum()) < 0.5  # measured 0.29; a wrong or shifted kernel scores > 1.5
    assert float((found - kernel.flip(-1, -2)).abs().sum()) > 1.0


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
    net = WienerDeblurNet().eval()
    with torch.inference_mode():
        for shape in ((1, 3, 70, 90), (2, 3, 64, 64)):
            parts = net.parts(torch.rand(shape))
            assert parts.restored.shape == shape and parts.kernel.shape == (shape[0], 31, 31)
            assert torch.allclose(parts.kernel.sum((1, 2)), torch.ones(shape[0]), atol=1e-5)
        (tiled,) = restore_tiled(net, [coffee[0]], tile=128, overlap=32, batch=4)
    assert tiled.shape == coffee.shape[1:] and torch.isfinite(tiled).all()


def test_an_untrained_net_starts_as_wiener_with_its_own_kernel(coffee):
    """Its refinement starts at zero, so the first output is the Wiener stage's: training starts from the maths."""
    net = WienerDeblurNet().eval()
    with torch.inference_mode():
        parts = net.parts(coffee)
    assert torch.equal(parts.restored, parts.deconvolved)
    assert psnr(parts.restored, coffee) > 35  # sharp input: the estimated kernel is close to no blur


def test_evaluate_loads_either_architecture(tmp_path):
    torch.manual_seed(2)
    net = WienerDeblurNet()
    save_half(net, tmp_path / "deblur.safetensors")
    loaded = ev.load_net(tmp_path / "deblur.safetensors")
    assert isinstance(loaded, WienerDeblurNet) and not loaded.training
    assert loaded.state_dict().keys() == net.state_dict().keys()
    assert type(from_state(ev.load_net(None).state_dict())).__name__ == "DeblurNet"


def test_training_writes_exactly_its_three_files(tmp_path, monkeypatch):
    """The GPU run's exact command line, on a CPU, for two steps on a tiny packed photo set."""
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
                                      "--crop", "64", "--data", str(packed), "--out", str(out),
                                      "--checkpoint", str(tmp_path / "ckpt.pt")])
    train.main()
    assert sorted(p.name for p in out.iterdir()) == ["deblur.safetensors", "loss_curve.csv", "training.json"]
    record = json.loads((out / "training.json").read_text())
    assert record["steps_reached"] == 2 and record["seed"] == train.Recipe.seed and record["device"]["type"] == "cpu"
    assert "gain_tremor" in record["final"]
    assert isinstance(ev.load_net(out / "deblur.safetensors"), WienerDeblurNet)
