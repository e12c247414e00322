"""The fonts the training data is rendered from, fetched from Debian by package name.

Each `Face` is one hand. Packages are fetched and unpacked into a cache folder by
`research.debian`; nothing is installed on the system. Whole faces are held out
(`held_out=True`) to measure how the model encodes hands it never saw.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from research import debian

_TT = "usr/share/fonts/truetype/"
_OT = "usr/share/fonts/opentype/"


@dataclass(frozen=True)
class Face:
    name: str
    package: str
    path: str  # inside the unpacked package
    index: int = 0  # face number inside a .ttc collection
    held_out: bool = False


# A plain sans, in no training hand: what the content encoder reads for every character.
REFERENCE = Face("wqy-microhei", "fonts-wqy-microhei", _TT + "wqy/wqy-microhei.ttc")

FACES: tuple[Face, ...] = (
    # Chinese Kaiti and handwriting faces (they carry their own Latin too).
    Face("ukai", "fonts-arphic-ukai", _TT + "arphic/ukai.ttc"),
    Face("gkai00mp", "fonts-arphic-gkai00mp", _TT + "arphic-gkai00mp/gkai00mp.ttf"),
    Face("bkai00mp", "fonts-arphic-bkai00mp", _TT + "arphic-bkai00mp/bkai00mp.ttf"),
    Face("cwkai", "fonts-cwtex-kai", _TT + "cwtex/cwkai.ttf", held_out=True),
    Face("tw-kai", "fonts-cns11643-kai", _TT + "cns11643/TW-Kai-98_1.ttf"),
    Face("lxgw-wenkai", "fonts-lxgw-wenkai", _TT + "lxgw-wenkai/LXGWWenKai-Regular.ttf"),
    Face("klee", "fonts-klee", _TT + "klee/KleeOne-Regular.ttf"),
    Face("seto", "fonts-seto", _TT + "seto/setofont.ttf"),
    # Latin handwriting faces (fonts-femkeklaver is left out: many of its glyphs are drawn in outline).
    Face("dkg", "fonts-dkg-handwriting", _TT + "fifthhorseman/dkg.ttf"),
    Face("dkg-italic", "fonts-dkg-handwriting", _TT + "fifthhorseman/dkgIt.ttf"),
    Face("breip", "fonts-breip", _TT + "breip/Breip.ttf"),
    *(Face(f"bwh-{n.lower()}", "fonts-bwht", f"{_OT}bwht/BecauseWe{n}-Regular.otf")
      for n in ("Build", "Connect", "Create", "Learn", "Mentor", "Organize")),
        Face("rufscript", "fonts-rufscript", _TT + "rufscript/Rufscript010.ttf"),
    Face("humor-sans", "fonts-humor-sans", _TT + "humor-sans/Humor-Sans.ttf", held_out=True),
    Face("dancingscript", "fonts-dancingscript", _OT + "dancingscript/DancingScript-Regular.otf"),
    Face("kaushanscript", "fonts-kaushanscript", _OT + "kaushanscript/KaushanScript-Regular.otf"),
)


def fetch(faces: tuple[Face, ...], cache: Path) -> Path:
    """Download and unpack every package the faces need into cache/root; returns that root.

    Idempotent: a package already unpacked is not fetched again. Writes only under `cache`.
    """
    root = cache / "root"
    missing = {f.package for f in faces if not (root / f.path).exists()}
    return debian.fetch(dict.fromkeys(missing), cache)


def coverage(face: Face, root: Path, chars: str) -> str:
    """The characters of `chars` the face's cmap maps (fontTools; only needed to build data)."""
    from fontTools.ttLib import TTFont

    font = TTFont(str(root / face.path), fontNumber=face.index, lazy=True)
    cmap = font.getBestCmap()
    return "".join(ch for ch in chars if ord(ch) in cmap)
