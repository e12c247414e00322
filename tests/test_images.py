"""Decoding untrusted uploads and encoding under a byte budget."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from conftest import png_bytes, png_declaring
from odd_images import png_chunk
from models import samples
from models.errors import TooLargeError
from models.images import ImageError, Limits, decode, encode, encode_animation, probe


def saved(image: Image.Image, fmt: str, **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kw)
    return buffer.getvalue()


@pytest.mark.parametrize("make, expected", [
    (lambda: saved(Image.new("RGBA", (40, 30), (255, 0, 0, 0)), "PNG"), (255, 255, 255)),
    (lambda: saved(Image.new("RGBA", (40, 30), (255, 0, 0, 255)), "PNG"), (255, 0, 0)),
    (lambda: saved(Image.new("LA", (40, 30), (10, 0)), "PNG"), (255, 255, 255)),
    (lambda: saved(Image.new("RGBA", (40, 30), (0, 0, 255, 0)).convert("P"), "PNG", transparency=0), (255, 255, 255)),
    (lambda: saved(Image.new("L", (40, 30), 128), "PNG"), (128, 128, 128)),
    (lambda: saved(Image.new("CMYK", (40, 30), (0, 255, 0, 0)), "JPEG", quality=100), (255, 0, 255)),
    (lambda: saved(Image.fromarray(np.full((30, 40), 32896, np.uint16)), "PNG"), (128, 128, 128)),
    (lambda: saved(Image.fromarray(np.full((30, 40), 0.5, np.float32)), "TIFF"), (128, 128, 128)),
    (lambda: saved(Image.new("1", (40, 30), 1), "BMP"), (255, 255, 255)),
])
def test_every_mode_becomes_rgb(make, expected):
    image = decode(make())
    assert image.mode == "RGB" and image.size == (40, 30)
    assert all(abs(a - b) <= 2 for a, b in zip(image.getpixel((5, 5)), expected))


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animation_gives_its_first_frame(fmt):
    frames = [Image.new("RGB", (40, 30), c) for c in ((0, 255, 0), (255, 0, 0), (0, 0, 255))]
    image = decode(saved(frames[0], fmt, save_all=True, append_images=frames[1:], lossless=True))
    assert image.getpixel((10, 10))[1] > 200 and image.getpixel((10, 10))[0] < 40


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 30), (9, 9, 9))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    data = saved(image, "JPEG", exif=exif.tobytes())
    assert probe(data).width == 30 and probe(data).height == 40
    assert decode(data).size == (30, 40)


@pytest.mark.parametrize("data, words", [
    (b"", "empty"),
    (b"hello, this is a text file\n" * 20, "not an image"),
    (png_bytes(Image.new("RGB", (400, 300), (1, 2, 3)))[:300], "truncated or damaged"),
    (png_declaring(100_000, 100_000), "decompression bomb"),
    (png_declaring(9_000, 9_000), "megapixels"),
    (png_bytes(Image.new("RGB", (8, 300))), "at least 16"),
])
def test_bad_uploads_are_one_clear_sentence(data, words):
    with pytest.raises(ImageError) as caught:
        decode(data)
    message = str(caught.value)
    assert words in message and message.endswith(".") and "\n" not in message


def test_byte_cap_is_checked_before_decoding():
    with pytest.raises(ImageError, match="limit is"):
        probe(samples.photo("cat"), Limits(max_bytes=1000))


@pytest.mark.parametrize("fmt, ext", [("auto", "png"), ("png", "png"), ("jpeg", "jpg"), ("webp", "webp")])
def test_encode_keeps_small_images_whole(fmt, ext):
    image = decode(samples.photo("cat"))
    data, got = encode(image, fmt, 10 * 2**20)
    assert got == ext and Image.open(io.BytesIO(data)).size == image.size


def test_encode_fits_a_tight_budget_by_recompressing_then_downscaling():
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (1200, 1600, 3), dtype=np.uint8))
    data, ext = encode(noise, "auto", 400_000)
    assert len(data) <= 400_000 and ext == "jpg"
    shrunk = Image.open(io.BytesIO(data))
    assert shrunk.width < 1600 and abs(shrunk.width / shrunk.height - 4 / 3) < 0.01


def test_animation_fits_its_budget():
    rng = np.random.default_rng(1)
    frames = [Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)) for _ in range(8)]
    data, ext = encode_animation(frames, "gif", 80, 200_000)
    gif = Image.open(io.BytesIO(data))
    assert ext == "gif" and len(data) <= 200_000 and gif.n_frames == 8


def test_a_result_that_cannot_fit_the_upload_limit_is_a_sentence_for_the_person():
    noise = Image.fromarray(np.random.default_rng(1).integers(0, 256, (512, 512, 3), dtype=np.uint8))
    with pytest.raises(TooLargeError, match=r"would not fit in 0\.0 MB, even scaled down; try a smaller size") as caught:
        encode(noise, "png", 200)
    assert caught.value.outcome == "too_large"
    with pytest.raises(TooLargeError, match="try fewer frames"):
        encode_animation([noise, noise], "gif", 80, 200)


def in_idat_chunks(png: bytes, size: int) -> bytes:
    """The same PNG with its pixel data re-split into `size`-byte IDAT chunks, as libpng writes 8 KB ones."""
    pos, head, data, tail = 8, [png[:8]], b"", []
    while pos < len(png):
        length, kind = int.from_bytes(png[pos:pos + 4], "big"), png[pos + 4:pos + 8]
        if kind == b"IDAT":
            data += png[pos + 8:pos + 8 + length]
        else:
            (tail if data else head).append(png[pos:pos + 12 + length])
        pos += 12 + length
    return b"".join(head + [png_chunk(b"IDAT", data[i:i + size]) for i in range(0, len(data), size)] + tail)


def test_header_walks_are_bounded_whatever_the_file_and_ordinary_files_pass():
    """Every PNG chunk, JPEG segment or GIF block is a step of a Python loop (ours or Pillow's):
    files built of millions of them are refused at once, real ones of the largest size decode."""
    noise = np.random.default_rng(0).integers(0, 255, (2400, 2400, 3), dtype=np.uint8)
    big = in_idat_chunks(png_bytes(Image.fromarray(noise)), 8192)  # 17 MB in 2,100 chunks, libpng's way
    assert decode(big).size == (2400, 2400)
    gif = saved(Image.new("P", (64, 64), 3), "GIF")
    start = gif.index(b"\x2c")  # the first image: a million empty comment blocks before it
    chatty = gif[:start] + b"\x21\xfe\x01a\x00" * 1_000_000 + gif[start:]
    jpeg = saved(Image.new("RGB", (64, 64)), "JPEG")
    many_segments = jpeg[:2] + b"\xff\xfe\x00\x02" * 2000 + jpeg[2:]  # 2,000 empty comments
    for crafted in (chatty, many_segments):
        with pytest.raises(ImageError, match="far too many tiny pieces"):
            probe(crafted)
