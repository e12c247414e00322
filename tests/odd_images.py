"""A small corpus of odd, hostile and broken image files, generated on the spot.

Each maker returns encoded bytes. The files are small (a few KB to a few MB) so the whole
corpus goes through the command line and the pool in seconds; where the real-world case is
huge (a 40 MP scan bomb, a 7 GB file), a small file with the same defect stands in for it.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw

from models import samples


def save(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def scene(width: int = 96, height: int = 64) -> Image.Image:
    """A picture with structure (gradient and shapes): a blank result cannot pass for it."""
    x = np.linspace(0, 255, width)[None, :, None]
    y = np.linspace(0, 255, height)[:, None, None]
    array = np.concatenate([x + 0 * y, y + 0 * x, 255 - (x + y) / 2], axis=2).astype(np.uint8)
    image = Image.fromarray(array, "RGB")
    ImageDraw.Draw(image).ellipse((width // 4, height // 4, width * 3 // 4, height * 3 // 4), fill=(20, 20, 20))
    return image


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def with_png_chunk(png: bytes, chunk: bytes) -> bytes:
    """Insert a chunk right after IHDR (where metadata usually sits)."""
    end_of_ihdr = 8 + 8 + 13 + 4
    return png[:end_of_ihdr] + chunk + png[end_of_ihdr:]


# -- the odd files ----------------------------------------------------------------------------

def thin(width: int = 2048, height: int = 16) -> bytes:
    return save(scene(width, height), "PNG")


def scan_bomb(repeats: int = 400) -> bytes:
    """A progressive JPEG whose last scan is repeated: each copy costs a full pass when decoded."""
    data = save(scene(64, 64), "JPEG", progressive=True, quality=90)
    last = data.rindex(b"\xff\xda")
    end = data.rindex(b"\xff\xd9")
    return data[:end] + data[last:end] * repeats + data[end:]


def colour_key_rgb() -> bytes:
    """RGB PNG whose pure red is transparent (a tRNS colour key, no alpha channel)."""
    image = scene()
    ImageDraw.Draw(image).rectangle((0, 0, 31, 31), fill=(255, 0, 0))
    return save(image, "PNG", transparency=(255, 0, 0))


def colour_key_grey() -> bytes:
    image = scene().convert("L")
    ImageDraw.Draw(image).rectangle((0, 0, 31, 31), fill=0)
    return save(image, "PNG", transparency=0)


def gif_transparent_index() -> bytes:
    image = scene().convert("L")
    ImageDraw.Draw(image).rectangle((0, 0, 31, 31), fill=0)
    return save(image, "GIF", transparency=0)


def float_tiff_nan() -> bytes:
    array = np.asarray(scene().convert("L"), dtype=np.float32) / 255
    array[:10, :10] = np.nan
    array[10, 10] = np.inf
    return save(Image.fromarray(array, "F"), "TIFF")


def tiff_deflate_flipped() -> bytes:
    data = bytearray(save(scene(256, 256), "TIFF", compression="tiff_adobe_deflate"))
    for i in range(400, len(data) - 400, 97):  # inside the compressed strips
        data[i] ^= 0xFF
    return bytes(data)


def tiff_lzw_half() -> bytes:
    data = save(scene(256, 256), "TIFF", compression="tiff_lzw")
    return data[: len(data) // 2]


def jpeg_corrupt_exif() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 1
    exif[0x010E] = "x" * 40
    block = bytearray(exif.tobytes())
    block[24:28] = b"\x00\x00\xff\x00"  # the description's offset points past the end
    return save(scene(), "JPEG", exif=bytes(block))


def png_huge_ztxt() -> bytes:
    text = zlib.compress(b"a" * (2 * 2**20), 9)
    return with_png_chunk(save(scene(), "PNG"), png_chunk(b"zTXt", b"Comment\0\0" + text))


def png_huge_iccp() -> bytes:
    profile = zlib.compress(bytes(1_500_000), 9)
    return with_png_chunk(save(scene(), "PNG"), png_chunk(b"iCCP", b"big\0\0" + profile))


# -- cases that already held -----------------------------------------------------------------

def bomb_png() -> bytes:
    header = struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + png_chunk(b"IEND", b"")


def bomb_gif() -> bytes:
    data = bytearray(save(scene(), "GIF"))
    data[6:10] = struct.pack("<HH", 65535, 65535)  # logical screen
    at = data.index(b"\x2c")  # image descriptor
    data[at + 5:at + 9] = struct.pack("<HH", 65535, 65535)
    return bytes(data)


def truncated_png() -> bytes:
    data = save(scene(256, 256), "PNG")
    return data[: len(data) * 2 // 3]


def truncated_jpeg() -> bytes:
    data = save(scene(256, 256), "JPEG")
    return data[: len(data) // 2]


def bad_crc_png() -> bytes:
    data = bytearray(save(scene(), "PNG"))
    data[29] ^= 0xFF  # IHDR's CRC
    return bytes(data)


def exif_rotated() -> bytes:
    """Stored 96x64 with orientation 6: shown upright it is 64x96."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return save(scene(), "JPEG", exif=exif.tobytes(), quality=95)


def cmyk_jpeg() -> bytes:
    return save(scene().convert("CMYK"), "JPEG")


def png16() -> bytes:
    array = np.asarray(scene().convert("L"), dtype=np.uint16) * 257
    return save(Image.fromarray(array), "PNG")


def la_png() -> bytes:
    image = scene().convert("LA")
    alpha = Image.new("L", image.size, 255)
    ImageDraw.Draw(alpha).rectangle((0, 0, 31, 31), fill=0)
    image.putalpha(alpha)
    return save(image, "PNG")


def palette_transparent_png() -> bytes:
    image = scene().convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    ImageDraw.Draw(image).rectangle((0, 0, 31, 31), fill=15)
    return save(image, "PNG", transparency=15)


def animated_gif() -> bytes:
    frames = [scene(), scene().transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    return save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


# name -> (maker, None when it must be processed, else a regex the one sentence matches)
CORPUS: dict[str, tuple[Callable[[], bytes], str | None]] = {
    "thin-2048x16": (thin, None),
    "thin-1000x16": (lambda: thin(1000, 16), None),
    "scan-bomb": (scan_bomb, "scans"),
    "colour-key-rgb": (colour_key_rgb, None),
    "colour-key-grey": (colour_key_grey, None),
    "gif-transparent-index": (gif_transparent_index, None),
    "float-tiff-nan": (float_tiff_nan, None),
    "tiff-deflate-flipped": (tiff_deflate_flipped, "damaged"),
    "tiff-lzw-half": (tiff_lzw_half, "damaged|not an image"),
    "jpeg-corrupt-exif": (jpeg_corrupt_exif, None),
    "png-huge-ztxt": (png_huge_ztxt, None),
    "png-huge-iccp": (png_huge_iccp, None),
    "bomb-png": (bomb_png, "decompression bomb"),
    "bomb-gif": (bomb_gif, "decompression bomb"),
    "zero-bytes": (lambda: b"", "empty"),
    "random-bytes": (lambda: np.random.default_rng(7).bytes(5000), "not an image"),
    "zip": (lambda: b"PK\x03\x04" + bytes(200), "not an image"),
    "html": (lambda: b"<!doctype html><html><body><img src=x></body></html>", "not an image"),
    "svg": (lambda: b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"><rect width="64" height="64"/></svg>', "not an image"),
    "truncated-png": (truncated_png, "damaged"),
    "truncated-jpeg": (truncated_jpeg, "damaged"),
    "bad-crc-png": (bad_crc_png, "damaged|not an image"),
    "tiny-8x8": (lambda: save(scene(8, 8), "PNG"), "at least 16 pixels"),
    "exif-rotated": (exif_rotated, None),
    "cmyk-jpeg": (cmyk_jpeg, None),
    "png-16-bit": (png16, None),
    "la-png": (la_png, None),
    "palette-transparent-png": (palette_transparent_png, None),
    "animated-gif": (animated_gif, None),
    "photo": (lambda: samples.photo("cat"), None),
}
