"""Files from Debian packages, fetched by name without installing anything.

Each package is downloaded with `apt-get download NAME[=VERSION]` into `cache/debs` and
unpacked with `dpkg-deb -x` into `cache/root`: only files under `cache` are written. The
training photos (`restore/photos.py`) and the handwriting fonts (`handwriting/fonts.py`)
both come this way.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from pathlib import Path


def _debs(debs: Path, name: str, version: str | None) -> list[Path]:
    """The .deb files of a package already downloaded (apt-get writes an epoch's colon as %3a)."""
    pinned = version.replace(":", "%3a") if version else "*"
    return sorted(debs.glob(f"{name}_{pinned}_*.deb"))


def fetch(packages: Mapping[str, str | None], cache: Path) -> Path:
    """Download and unpack every package into cache/root; returns that root.

    `packages` maps each name to its exact version, or to None for the archive's current one.
    A package whose .deb is already in cache/debs is not downloaded again.
    """
    root, debs = cache / "root", cache / "debs"
    root.mkdir(parents=True, exist_ok=True)
    debs.mkdir(parents=True, exist_ok=True)
    for name, version in sorted(packages.items()):
        if not _debs(debs, name, version):
            spec = f"{name}={version}" if version else name
            subprocess.run(["apt-get", "download", spec], cwd=debs, check=True, stdout=subprocess.DEVNULL)
        for deb in _debs(debs, name, version):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    return root


def package_versions(cache: Path) -> dict[str, str]:
    """The exact Debian versions fetched into `cache`, for a data recipe (read from the .deb file names)."""
    versions = {}
    for deb in sorted((cache / "debs").glob("*.deb")):
        name, version, _ = deb.name.split("_")
        versions[name] = version.replace("%3a", ":")
    return versions
