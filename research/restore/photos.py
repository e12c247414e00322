"""The photographs /fix is trained and evaluated on: fetched by package name, split by whole image.

Sources are Debian wallpaper packages that hold real photographs (fetched at pinned versions by
`research.debian`) and scikit-image's sample photos.
Each photo is downscaled once (Lanczos, longer side at most `max_side`), which also removes
most JPEG and sensor noise, so the prepared PNGs make clean, sharp targets.
"""

from __future__ import annotations

import argparse
import io
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from research import debian

DEBIAN_PACKAGES = {
    "mate-backgrounds": "1.26.0-1",
    "lomiri-wallpapers-16.04": "20.04.0-2",
    "lomiri-wallpapers-20.04": "20.04.0-2",
}

_MATE = "usr/share/backgrounds/mate/nature/"
_LOMIRI = "usr/share/backgrounds/"


@dataclass(frozen=True)
class Photo:
    name: str
    source: str  # a Debian package name, or "scikit-image"
    path: str  # inside the package, or the scikit-image data file name
    held_out: bool = False


PHOTOS: tuple[Photo, ...] = (
    *(Photo(n.lower(), "mate-backgrounds", f"{_MATE}{n}.jpg", held_out=n in ("LadyBird", "RainDrops"))
      for n in ("Aqua", "Blinds", "Dune", "FreshFlower", "Garden", "GreenMeadow", "LadyBird",
                "RainDrops", "Storm", "TwoWings", "Wood", "YellowFlower")),
    *(Photo(n.split("_by_")[0].lower(), "lomiri-wallpapers-16.04", f"{_LOMIRI}{n}.jpg",
            held_out=n.startswith(("Bridge", "picosdeeuropa", "Wine")))
      for n in ("Bridge_by_Sander_Klootwijk", "Dragonfly_by_Bolly", "Picture_0B_by_freespace",
                "Picture_1A_by_freespace", "Wine_by_Jakkub_Mede", "aitzgorri_by_Aitzol_Berasategi",
                "analogpattern_by_Peter_Nerlich", "free_by_Peter_Nerlich",
                "friends_by_Aitzol_Berasategi", "greentock_by_Peter_Nerlich",
                "life_by_Aitzol_Berasategi", "picosdeeuropa_by_Aitzol_Berasategi",
                "seeding_by_Clements_Engelhardt", "sunset_by_Aitzol_Berasategi",
                "umang_by_Abhishek_Mudgal")),
    Photo("kleiber", "lomiri-wallpapers-20.04", f"{_LOMIRI}Kleiber_by_Lukas_Baubkus.jpg"),
    *(Photo(n.split(".")[0], "scikit-image", n, held_out=n == "coffee.png")
      for n in ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png")),
)


def _source_path(photo: Photo, debian_root: Path) -> Path:
    if photo.source == "scikit-image":
        import skimage

        return Path(skimage.__file__).parent / "data" / photo.path
    return debian_root / photo.path


def prepare(data_dir: Path, max_side: int = 1600) -> Path:
    """Fetch and downscale every photo into data_dir/{train,held_out}/NAME.png; idempotent."""
    done = data_dir / ".complete"
    if done.exists():
        return data_dir
    with tempfile.TemporaryDirectory() as tmp:
        debian_root = debian.fetch(DEBIAN_PACKAGES, Path(tmp))
        for photo in PHOTOS:
            image = Image.open(_source_path(photo, debian_root)).convert("RGB")
            image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
            split = data_dir / ("held_out" if photo.held_out else "train")
            split.mkdir(parents=True, exist_ok=True)
            image.save(split / f"{photo.name}.png")
    done.touch()
    return data_dir


def load_split(data_dir: Path, split: str) -> dict[str, np.ndarray]:
    """All prepared photos of one split as HxWx3 uint8 arrays, by name."""
    folder = data_dir / split
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is missing: run `python -m research.restore.photos pack` first (it prepares them)")
    return {p.stem: np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.glob("*.png"))}


def default_data_dir() -> Path:
    from models.settings import configured_cache_dir

    return configured_cache_dir() / "restore-data"


PACK_SIDES = {"train": 1280, "held_out": 768}
PACK_QUALITY = 95


def pack(data_dir: Path, out: Path) -> int:
    """Every prepared photo in one .npz of JPEGs (train 1280 px, held-out 768 px): one small file
    a training machine without network access can take; returns its size in bytes.

    Quality 95 without chroma subsampling keeps compression artefacts far below the blur and
    noise training adds.
    """
    arrays = {}
    for split, side in PACK_SIDES.items():
        for name, array in load_split(prepare(data_dir), split).items():
            image = Image.fromarray(array)
            image.thumbnail((side, side), Image.Resampling.LANCZOS)
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=PACK_QUALITY, subsampling=0)
            arrays[f"{split}/{name}"] = np.frombuffer(buffer.getvalue(), np.uint8)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **arrays)
    return out.stat().st_size


def load_packed(path: Path, split: str) -> dict[str, np.ndarray]:
    """One split of a `pack` file as HxWx3 uint8 arrays, by name."""
    with np.load(path) as packed:
        return {key.split("/", 1)[1]: np.asarray(Image.open(io.BytesIO(packed[key].tobytes())).convert("RGB"))
                for key in sorted(packed.files) if key.startswith(split + "/")}


def main() -> None:
    parser = argparse.ArgumentParser(description="Fetch the photos, or pack them into one file for training elsewhere.")
    commands = parser.add_subparsers(dest="command", required=True)
    packing = commands.add_parser("pack", help="write every photo, as JPEG, into one .npz")
    packing.add_argument("--out", type=Path, required=True)
    packing.add_argument("--data-dir", type=Path, default=None, help="prepared photos (default: in the cache)")
    args = parser.parse_args()
    size = pack(args.data_dir or default_data_dir(), args.out)
    print(f"wrote {args.out}: {size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
