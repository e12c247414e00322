"""GAN faces: seeds reproduce (bit for bit in the same shapes), options mean what they say."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from models import weights
from models.cli import main as cli
from models.gan.dcgan import Generator, latents, morph_latents, slerp, variations


@pytest.fixture(scope="module")
def generator(real_weights):
    net = Generator().eval()
    net.load_state_dict(weights.load("gan-faces", real_weights))
    return net


def test_same_seed_same_faces_in_a_new_process_too(tmp_path, real_weights):
    """Two separate runs of the CLI write byte-identical PNGs; another seed differs."""
    outs = []
    for n, seed in enumerate((1234, 1234, 1235)):
        out = tmp_path / f"faces{n}.png"
        assert cli(["dream", "-n", "9", "--seed", str(seed), "-o", str(out), "--device", "cpu"]) == 0
        outs.append(out.read_bytes())
    assert outs[0] == outs[1] != outs[2]
    grid = Image.open(io.BytesIO(outs[0]))
    assert grid.size == (3 * 128 + 4 * 2 * 2, 3 * 128 + 4 * 2 * 2)  # 3x3 faces of 128 px, 2 px gutters scaled x2


HALF_A_LEVEL = 0.5 / 255  # faces are stored as 8-bit pixels: a smaller change is invisible in the file


@torch.inference_mode()
def test_faces_do_not_depend_on_their_batch(generator):
    """A face is the same picture whatever it was batched with. Not bit for bit: oneDNN picks
    kernels (summation orders) per batch size and CPU, so float32 rounding may differ; a bug that
    mixes samples (batch statistics, wrong order) moves pixels by far more than half a level."""
    z = latents(7, 24)
    together = generator(z)
    assert (together[5:6] - generator(z[5:6])).abs().max() <= HALF_A_LEVEL
    assert (together - torch.cat([generator(z[:8]), generator(z[8:])])).abs().max() <= HALF_A_LEVEL
    assert (together[5:6] - together[6:7]).abs().max() > 0.1  # different faces do differ by more


@torch.inference_mode()
def test_faces_look_like_images(generator):
    faces = generator(latents(3, 8))
    assert faces.shape == (8, 3, 64, 64) and 0 <= faces.min() and faces.max() <= 1
    assert faces.std(dim=(1, 2, 3)).min() > 0.05  # not blank
    assert (faces[0] - faces[1]).abs().mean() > 0.05  # different seeds' faces differ


def test_truncation_only_scales_a_seed_towards_the_mean():
    assert torch.allclose(latents(5, 3, 0.5), 0.5 * latents(5, 3, 1.0))
    assert latents(5, 3, 0.5).norm() < latents(5, 3, 1.0).norm()


def test_variations_start_from_the_seed_and_stay_near_it():
    v = variations(11, 6, 1.0)
    assert torch.equal(v[0], latents(11, 1)[0])
    far = latents(12, 5)
    assert (v[1:] - v[0]).norm(dim=1).max() < (far - v[0]).norm(dim=1).min()


def test_morph_is_a_loop_that_passes_through_both_faces():
    a, b = latents(1, 1)[0], latents(2, 1)[0]
    frames = morph_latents(1, 2, 24, 1.0)
    assert frames.shape == (24, 100)
    assert torch.allclose(frames[0], a) and torch.allclose(frames[12], b, atol=1e-5)
    path = slerp(a, b, 5)
    assert torch.allclose(path[0], a) and torch.allclose(path[-1], b, atol=1e-5)
