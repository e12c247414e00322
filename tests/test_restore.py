"""DeblurNet with its committed weights, on a real photo it never saw in training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import photo_array
from models.restore import evaluate as ev
from models.restore.tiling import restore_tiled


@pytest.fixture(scope="module")
def net():
    return ev.load_net(None)


@pytest.fixture(scope="module")
def coffee() -> np.ndarray:
    """scikit-image's coffee photo: held out of DeblurNet's training (models/restore/photos.py)."""
    return photo_array("coffee").astype(np.float32) / 255


def restore(net, degraded: np.ndarray, tile: int) -> np.ndarray:
    with torch.inference_mode():
        (out,) = restore_tiled(net, [torch.from_numpy(degraded).permute(2, 0, 1)], tile=tile, overlap=32, batch=4)
    return out.permute(1, 2, 0).numpy()


# Measured with the committed weights: +0.96, +1.21 and +1.34 dB; an untrained or broken net gives 0 or less.
@pytest.mark.parametrize("condition, gain_db", [(ev.Condition("motion", 12), 0.6), (ev.Condition("defocus", 3), 0.8),
                                                (ev.Condition("gaussian", 2.0), 0.9)])
def test_it_deblurs_a_held_out_photo(net, coffee, condition, gain_db):
    kernel, degraded = ev.degrade(coffee, condition, image_index=0)
    margin = ev.border(kernel)
    score = lambda image: ev.psnr(ev.interior(image, margin), ev.interior(coffee, margin))  # noqa: E731
    assert score(restore(net, degraded, tile=256)) >= score(degraded) + gain_db


def test_a_sharp_photo_stays_as_it_is(net, coffee):
    assert ev.psnr(restore(net, coffee, tile=256), coffee) >= 36  # measured 39.4 dB


def test_tiles_blend_into_the_whole_image_result(net, coffee):
    """Small tiles (many seams) give what one pass over the whole photo gives."""
    _, degraded = ev.degrade(coffee, ev.Condition("gaussian", 2.0), image_index=0)
    whole = restore(net, degraded, tile=4096)
    tiled = restore(net, degraded, tile=128)
    assert ev.psnr(tiled, whole) >= 45  # measured 49.3 dB
