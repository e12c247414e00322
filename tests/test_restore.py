"""/fix's deblurring net (KernelDeblurNet) with its committed weights, on a real photo it never saw in training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import photo_array
from models.restore.tiling import restore_tiled
from research.restore import evaluate as ev


@pytest.fixture(scope="module")
def net():
    return ev.load_net(None)


@pytest.fixture(scope="module")
def coffee() -> np.ndarray:
    """scikit-image's coffee photo: held out of training (research/restore/photos.py)."""
    return photo_array("coffee").astype(np.float32) / 255


def restore(net, degraded: np.ndarray, tile: int = 512) -> np.ndarray:
    """Through /fix's CPU tiling: 512 px tiles (each gets its own kernel estimate), 64 px overlap."""
    with torch.inference_mode():
        (out,) = restore_tiled(net, [torch.from_numpy(degraded).permute(2, 0, 1)], tile=tile, overlap=64, batch=2)
    return out.permute(1, 2, 0).numpy()


# Measured with the committed weights: +2.67, +1.76, +1.70 dB and +4.36 on the shake family training never
# drew (tremor); an untrained refinement passes the blurred photo through (0 dB).
@pytest.mark.parametrize("condition, gain_db", [(ev.Condition("motion", 12), 1.8), (ev.Condition("defocus", 3), 1.2),
                                                (ev.Condition("gaussian", 2.0), 1.1), (ev.Condition("tremor", 15), 3.0)])
def test_it_deblurs_a_held_out_photo(net, coffee, condition, gain_db):
    kernel, degraded = ev.degrade(coffee, condition, image_index=0)
    margin = ev.border(kernel)
    score = lambda image: ev.psnr(ev.interior(image, margin), ev.interior(coffee, margin))  # noqa: E731
    assert score(restore(net, degraded)) >= score(degraded) + gain_db


def test_a_sharp_photo_stays_as_it_is(net, coffee):
    assert ev.psnr(restore(net, coffee), coffee) >= 36  # measured 38.7 dB


def test_tiles_blend_into_the_whole_image_result(net, coffee):
    """Two overlapping 512 px tiles, each with its own kernel estimate, blend without seams into
    what one pass over the whole photo gives."""
    _, degraded = ev.degrade(coffee, ev.Condition("gaussian", 2.0), image_index=0)
    assert ev.psnr(restore(net, degraded), restore(net, degraded, tile=4096)) >= 45  # measured 53.7 dB
