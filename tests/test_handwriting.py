"""The handwriting VAE's mechanics with small random weights: charset, latent maths, augmentation, training I/O."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.handwriting.charset import CHARSET, covers
from models.handwriting.glyphs import read_reference
from models.handwriting.model import CONTENT_CACHE, GlyphVAE, free_bits_kl, kl_per_dim, load
from models.weights import save_half
from research import debian
from research.handwriting import augment, fonts, train
from research.handwriting.data import held_out_chars, pack_bits


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    torch.manual_seed(0)
    file = tmp_path_factory.mktemp("hw") / "handwriting.safetensors"
    save_half(GlyphVAE(), file)
    return load("cpu", file)


def test_charset_is_ascii_cjk_punctuation_and_gb2312_level1():
    assert len(CHARSET) == len(set(CHARSET)) == 10 + 52 + 32 + 18 + 3755
    assert CHARSET[-3755] == "啊" and CHARSET[-1] == "座"  # GB2312 0xB0A1 and 0xD7F9
    assert all(covers(c) for c in "Az09,?你好，。")
    assert not any(covers(c) for c in "國€é😀 ")


def test_reference_glyphs_ship_for_every_character():
    charset, glyphs = read_reference()
    assert charset == CHARSET
    assert glyphs.shape == (len(CHARSET), 64, 64)
    assert glyphs.reshape(len(CHARSET), -1).sum(1).min() > 0


def test_held_out_characters_are_a_fixed_set_of_chinese():
    mask = held_out_chars()
    assert np.array_equal(mask, held_out_chars())
    assert mask.sum() == 200 and all("\u4e00" <= c <= "\u9fff" for c in np.array(list(CHARSET))[mask])


def test_prior_is_seeded_and_scaled_by_temperature(model):
    assert torch.equal(model.prior(5), model.prior(5))
    assert not torch.equal(model.prior(5), model.prior(6))
    assert model.prior(5).shape == (model.z_dim,)
    assert torch.allclose(model.prior(5, 0.5), 0.5 * model.prior(5, 1.0))


def test_write_gives_ink_per_character_independent_of_the_batch(model):
    z = model.prior(1)
    ink = model.write(list("你a。7"), z)
    assert ink.shape == (4, 1, 64, 64)
    assert ink.min() >= 0 and ink.max() <= 1
    alone = torch.cat([model.write([c], z) for c in "你a。7"])
    tolerance = 1e-4 * ink.abs().max().item() + 1e-5
    assert (alone - ink).abs().max() <= tolerance
    per_glyph = model.write(list("你a。7"), z.expand(4, -1))
    assert (per_glyph - ink).abs().max() <= tolerance
    assert (model.write(["你"], model.prior(2)) - ink[:1]).abs().max() > 0  # z reaches the pixels


def test_a_full_content_cache_starts_afresh_with_the_characters_asked_for(model):
    """Past CONTENT_CACHE characters the cache is cleared: characters cached before and asked for
    again in the same call are computed again, not looked up in the emptied cache."""
    chinese = [ch for ch in CHARSET if ord(ch) > 0x4E00]
    z = model.prior(3)
    model.write(chinese[:CONTENT_CACHE - 10], z)
    again = chinese[CONTENT_CACHE - 20:CONTENT_CACHE + 80]  # ten cached, ninety new: over the cache's size
    ink = model.write(again, z)
    assert ink.shape == (len(again), 1, 64, 64)


def test_write_refuses_characters_outside_the_set(model):
    with pytest.raises(ValueError, match="國"):
        model.write(list("你國"), model.prior(1))
    assert model.write([], model.prior(1)).shape == (0, 1, 64, 64)


def test_kl_matches_torch_distributions_and_free_bits_floor_it():
    g = torch.Generator().manual_seed(0)
    mean, logvar = torch.randn(16, 8, generator=g), torch.randn(16, 8, generator=g)
    q = torch.distributions.Normal(mean, torch.exp(0.5 * logvar))
    expected = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).mean(0)
    assert torch.allclose(kl_per_dim(mean, logvar), expected, rtol=1e-5, atol=1e-6)

    kl = torch.tensor([0.05, 0.5, 2.0], requires_grad=True)
    total = free_bits_kl(kl, free_bits=0.25)
    assert total.item() == pytest.approx(0.25 + 0.5 + 2.0)
    total.backward()
    assert kl.grad.tolist() == [0.0, 1.0, 1.0]  # a dimension under its free bits is not pushed down


def test_one_hand_distorts_all_its_glyphs_alike():
    glyph = torch.zeros(64, 64)
    glyph[16:48, 30:34] = 1  # a vertical stroke
    glyphs = glyph.expand(3, 4, 64, 64)  # 3 hands of the same glyph 4 times
    still = augment.Ranges(glyph_elastic=0.0, glyph_shift=0.0, glyph_rotation=0.0)
    out = augment.hands(glyphs, torch.Generator().manual_seed(1), still)
    assert out.shape == glyphs.shape and out.min() >= 0 and out.max() <= 1
    assert (out[:, 1:] - out[:, :1]).abs().max() < 1e-5  # within a hand: identical
    assert (out[1] - out[0]).abs().max() > 0.5  # across hands: different
    again = augment.hands(glyphs, torch.Generator().manual_seed(1), still)
    assert torch.equal(out, again)


def test_stroke_width_thickens_and_thins():
    ink = torch.zeros(2, 1, 16, 16)
    ink[:, :, 4:12, 6:10] = 1
    out = augment.stroke_width(ink, torch.tensor([1.0, -1.0]))
    assert out[0].sum() > ink[0].sum() > out[1].sum() > 0


def _tiny_packed(file, charset_slice=slice(94, 94 + 40)):
    """Two faces made from the reference glyphs (one held out), 40 characters each."""
    charset, glyphs = read_reference()
    chars = np.arange(len(charset))[charset_slice]
    held_char = held_out_chars()
    reference_bits = pack_bits(glyphs)
    np.savez_compressed(file, bits=np.concatenate([reference_bits[chars]] * 2),
                        face=np.repeat(np.array([0, 1], np.int16), len(chars)),
                        char=np.tile(chars.astype(np.int16), 2), faces=np.array(["a", "b"]),
                        held_out_face=np.array([False, True]), held_out_char=held_char,
                        reference=reference_bits, charset=np.array(charset), recipe=np.array("{}"))


def test_training_writes_exactly_its_three_files(tmp_path):
    _tiny_packed(tmp_path / "tiny.npz")
    out = tmp_path / "run"
    train.main(["--data", str(tmp_path / "tiny.npz"), "--out", str(out), "--device", "cpu", "--steps", "2",
                "--hands", "2", "--per-hand", "3", "--seed", "4"])
    assert sorted(p.name for p in out.iterdir()) == ["handwriting.safetensors", "loss_curve.csv", "training.json"]
    report = json.loads((out / "training.json").read_text())
    assert report["steps"] == 2 and report["recipe"]["seed"] == 4
    assert len(report["kl_per_dim"]) == GlyphVAE().cfg.z_dim
    assert load("cpu", out / "handwriting.safetensors").write(["你"], torch.zeros(32)).shape == (1, 1, 64, 64)


def test_sampled_hands_hold_one_training_face_and_no_held_out_character(tmp_path):
    _tiny_packed(tmp_path / "tiny.npz", charset_slice=slice(0, None))
    data = train.Packed.load(tmp_path / "tiny.npz")
    sampler = train.HandSampler(data, torch.device("cpu"), k=6, recipe=train.Recipe())
    rows = sampler.rows(64, torch.Generator().manual_seed(0)).numpy()
    assert (data.face[rows] == 0).all()  # face 1 is held out
    assert not data.held_out_char[data.char[rows]].any()
    assert len(np.unique(data.char[rows])) > 100
    glyphs, refs = sampler.batch(4, torch.Generator().manual_seed(0))
    assert glyphs.shape == refs.shape == (4, 6, 64, 64)


def test_fonts_fetch_each_missing_package_once_and_unpack_it_into_the_cache(tmp_path, monkeypatch):
    """The Debian fetch (research.debian, shared with the training photos), with apt-get and dpkg-deb faked."""
    calls = []

    def run(command, cwd=None, **kwargs):
        calls.append(command[:2])
        if command[:2] == ["apt-get", "download"]:
            (Path(cwd) / f"{command[2]}_1.0-1_all.deb").touch()
        elif command[0] == "dpkg-deb":
            name = Path(command[2]).name.split("_")[0]
            for face in fonts.FACES + (fonts.REFERENCE,):
                if face.package == name:
                    (Path(command[3]) / face.path).parent.mkdir(parents=True, exist_ok=True)
                    (Path(command[3]) / face.path).touch()

    monkeypatch.setattr(debian.subprocess, "run", run)
    dkg = tuple(f for f in fonts.FACES if f.package == "fonts-dkg-handwriting")
    assert len(dkg) == 2  # one package, two faces
    root = fonts.fetch(dkg + (fonts.REFERENCE,), tmp_path)
    assert root == tmp_path / "root" and all((root / f.path).is_file() for f in dkg)
    assert calls == [["apt-get", "download"], ["dpkg-deb", "-x"]] * 2
    assert debian.package_versions(tmp_path) == {"fonts-dkg-handwriting": "1.0-1", "fonts-wqy-microhei": "1.0-1"}
    calls.clear()
    fonts.fetch(dkg, tmp_path)  # everything is there: nothing is fetched or unpacked again
    assert calls == []
