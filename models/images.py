"""Decode untrusted image bytes safely; encode results under a byte budget.

Everything a person can upload goes through `probe` (header only: format, size, pixel cap and,
for JPEG, the number of scans, checked before any pixel is decoded) and then `decode` (first
frame, EXIF orientation applied, any mode flattened to RGB over white). Failures are
`ImageError`s whose message is one sentence meant for that person. What the decoding libraries
print or warn on the way (libtiff and libjpeg write to the C-level stderr) is logged, never shown.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import re
import struct
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from models.errors import TooLargeError, UploadError
from models.jobs import DEFAULT_MAX_BYTES

FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")  # phone MPO files open as JPEG
FORMAT_NAMES = "PNG, JPEG, WebP, GIF, BMP or TIFF"
MIN_SIDE = 16
# libjpeg's standard progressive script has 10 scans (6 for greyscale); encoders that tune
# their scripts stay well within a few dozen. Every extra scan is one more pass over the
# image's coefficients, so 32 scans bound the worst decode to about four times an ordinary
# progressive one (1.1 s against 0.29 s at 40 MP; docs/performance.md).
MAX_JPEG_SCANS = 32
_ROTATED = {5, 6, 7, 8}  # EXIF orientations that swap width and height
_EXIF_ORIENTATION = 0x0112
# A JPEG's segments (markers with a length) outside its scans: a photo has a dozen or two, a
# progressive one with its tables about 40, an ICC profile split over APP2 segments a few more.
MAX_JPEG_SEGMENTS = 1024
# A PNG's chunks: libpng writes its pixel data in 8 KB IDAT chunks, so 25 MB of it is 3,200.
# Every chunk is a step of a Python loop (ours, then Pillow's), about 5 us each.
MAX_PNG_CHUNKS = 16_384
# Pillow's header and chunk parsers are Python loops that call read() once per chunk, segment or
# block, and once per byte of a JPEG's fill or junk before its first scan: the number of reads
# bounds their time (about 1 us each) whatever the file. A 25 MB PNG in 8 KB chunks needs about
# 10,000 reads to decode; a JPEG or WebP, a few hundred.
MAX_READS = 100_000
TOO_FRAGMENTED = "That image file is built from far too many tiny pieces, which would take too long to read; I won't open it."
# Metadata chunks a decode never uses; Pillow refuses large ones (>1 MB text, >1 MB ICC) as errors.
_PNG_METADATA = (b"tEXt", b"zTXt", b"iTXt", b"iCCP")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Inside a JPEG scan, 0xFF is followed by 0x00 (a stuffed byte), a restart marker or more 0xFF fill.
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_FILL = re.compile(rb"\xff+")  # any number of 0xFF fill bytes may precede a marker

log = logging.getLogger(__name__)


class ImageError(UploadError):
    """The upload is not an image we accept; the message says why in one sentence."""


@dataclass(frozen=True)
class Limits:
    max_bytes: int = 25 * 2**20
    max_pixels: int = 40_000_000


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int  # as displayed, i.e. after EXIF orientation
    height: int


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


def too_large(size: int | None, limits: Limits) -> ImageError:
    """The over-the-byte-cap sentence; size None when only "more than the cap" is known (a stream)."""
    shown = f"over {_mb(limits.max_bytes)}" if size is None else _mb(size)
    return ImageError(f"That file is {shown}; the limit is {_mb(limits.max_bytes)}.")


def read_file(path: Path, limits: Limits) -> bytes:
    """Read at most the byte cap: a regular file is refused from its size alone, anything else
    (a device, a pipe) after one bounded read, so /dev/zero or a sparse 7 GB file cost nothing."""
    with path.open("rb") as file:
        size = os.fstat(file.fileno()).st_size
        if size > limits.max_bytes:
            raise too_large(size, limits)
        data = file.read(limits.max_bytes + 1)
    if len(data) > limits.max_bytes:
        raise too_large(None, limits)
    return data


class _Quiet:
    """While any decode runs, Python warnings and whatever the C libraries write to file
    descriptor 2 go to the log instead of the terminal.

    fd 2 belongs to the whole process, so the first decoder to enter redirects it to a
    temporary file and the last to leave restores it and logs what was written; the lock guards
    only that bookkeeping, so decodes on several threads still run in parallel. Anything another
    thread writes to stderr meanwhile is logged too, a little later, rather than lost.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.depth = 0
        self.saved_fd = -1
        self.sink: io.BufferedRandom | None = None
        self.saved_showwarning = warnings.showwarning
        self.heard: list[str] = []  # logged only once fd 2 is back: a log handler may write there

    def enter(self) -> None:
        with self.lock:
            self.depth += 1
            if self.depth == 1:
                sys.stderr.flush()
                self.sink = tempfile.TemporaryFile()
                self.saved_fd = os.dup(2)
                os.dup2(self.sink.fileno(), 2)
                self.saved_showwarning, warnings.showwarning = warnings.showwarning, self.hear

    def leave(self) -> None:
        with self.lock:
            self.depth -= 1
            if self.depth or self.sink is None:
                return
            sys.stderr.flush()
            os.dup2(self.saved_fd, 2)
            os.close(self.saved_fd)
            warnings.showwarning = self.saved_showwarning
            sink, self.sink, heard, self.heard = self.sink, None, self.heard, []
        sink.seek(0)
        heard += sink.read().decode(errors="replace").splitlines()
        sink.close()
        for line in heard:
            if line.strip():
                log.info("decoder: %s", line.strip())

    def hear(self, message: Warning | str, category: type[Warning], filename: str, lineno: int, *_: object) -> None:
        """warnings.showwarning while decoding."""
        with self.lock:
            self.heard.append(f"{category.__name__}: {message} ({filename}:{lineno})")


_QUIET = _Quiet()


def log_stream() -> TextIO:
    """A text stream to this process's stderr that `quiet` never redirects, for log handlers.

    A handler writing to fd 2 itself would have every record captured while any decode runs on
    another thread, then re-logged at INFO as decoder chatter: at EASEL_LOG_LEVEL=WARNING even
    errors (and the reference ids people are given) would vanish."""
    return open(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")  # open as long as its handler


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    _QUIET.enter()
    try:
        with np.errstate(all="ignore"):
            yield
    finally:
        _QUIET.leave()


class _CountedReads(io.BytesIO):
    """The bytes as a file that refuses its MAX_READS+1st read: Pillow's parsers loop in Python
    once per read, so this bounds their time on any crafted file (see MAX_READS)."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.reads = 0

    def read(self, size: int | None = -1, /) -> bytes:
        self.reads += 1
        if self.reads > MAX_READS:
            raise ImageError(TOO_FRAGMENTED)
        return super().read(size)


def _without_png_metadata(data: bytes) -> bytes:
    """The PNG without its text and ICC chunks, which a decode never uses: over Pillow's limits
    they would be refused as errors, so a valid picture with a 2 MB comment would be "damaged".
    A PNG of more than MAX_PNG_CHUNKS chunks is refused."""
    if not data.startswith(_PNG_SIGNATURE):
        return data
    kept, pos, dropped = [data[:8]], 8, False
    for _ in range(MAX_PNG_CHUNKS):
        if pos + 12 > len(data):
            break
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind, end = data[pos + 4:pos + 8], pos + 12 + length
        if kind in _PNG_METADATA:
            dropped = True
        else:
            kept.append(data[pos:end])
        pos = end
        if kind == b"IEND":
            break
    else:
        if pos + 12 <= len(data):
            raise ImageError(TOO_FRAGMENTED)
    kept.append(data[pos:])
    return b"".join(kept) if dropped else data


def jpeg_scans(data: bytes, stop_after: int = MAX_JPEG_SCANS) -> int:
    """Count the scans (SOS markers) of a JPEG's first image, walking segments by their lengths
    and entropy-coded data by its markers, so an SOS inside an EXIF thumbnail is not counted.
    Fill bytes and scan data are crossed by C-speed scans, so the walk costs one step per segment;
    more than MAX_JPEG_SEGMENTS of them is refused. Stops counting past `stop_after`; a malformed
    stream ends the count (Pillow then judges it)."""
    scans, pos, segments = 0, 2, 0
    while pos + 4 <= len(data) and data[pos] == 0xFF and scans <= stop_after:
        fill = _FILL.match(data, pos)
        assert fill is not None  # data[pos] is 0xFF
        pos = fill.end() - 1  # the last 0xFF of a run is the marker's own
        if pos + 4 > len(data):
            break
        marker = data[pos + 1]
        segments += 1
        if segments > MAX_JPEG_SEGMENTS:
            raise ImageError(TOO_FRAGMENTED)
        if marker == 0xD9:  # end of image
            break
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # no length field
            pos += 2
            continue
        pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker == 0xDA:
            scans += 1
            found = _NEXT_MARKER.search(data, pos)
            if found is None:
                break
            pos = found.start()
    return scans


def _open(data: bytes) -> Image.Image:
    """Pillow's lazy image over the bytes, through a file that bounds its parsers' work (_CountedReads)."""
    try:
        return Image.open(_CountedReads(_without_png_metadata(data)), formats=FORMATS)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"That file is not an image I can read; send a {FORMAT_NAMES}.") from None
    except Image.DecompressionBombError:
        raise ImageError("That image declares an absurd size (a decompression bomb); I won't open it.") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error):
        raise ImageError("That image file is damaged and cannot be read.") from None


def probe(data: bytes, limits: Limits = Limits()) -> ImageInfo:
    """Check an upload from its header alone: non-empty, under the byte cap, a known format, under the pixel cap."""
    if not data:
        raise ImageError("That file is empty.")
    if len(data) > limits.max_bytes:
        raise too_large(len(data), limits)
    with quiet():
        image = _open(data)
        orientation = _orientation(image)
    width, height = image.size
    if width * height > limits.max_pixels:
        raise ImageError(
            f"That image is {width}x{height} ({width * height / 1e6:.0f} megapixels); "
            f"the limit is {limits.max_pixels / 1e6:.0f} megapixels."
        )
    if min(width, height) < MIN_SIDE:
        raise ImageError(f"That image is only {width}x{height}; both sides need at least {MIN_SIDE} pixels.")
    if image.format in ("JPEG", "MPO") and jpeg_scans(data) > MAX_JPEG_SCANS:
        raise ImageError(f"That JPEG is split into more than {MAX_JPEG_SCANS} scans (photos use about 10), "
                         "which makes it far too slow to decode; I won't open it.")
    if orientation in _ROTATED:
        width, height = height, width
    return ImageInfo(image.format or "?", width, height)


def _orientation(image: Image.Image) -> int | None:
    """The EXIF orientation, read without decoding pixels.

    Pillow's PNG getexif() decodes the whole image to look for an eXIf chunk after the pixel
    data; here a PNG's EXIF counts only if it came before them (in the header, as usual).
    """
    if image.format == "PNG" and "exif" not in image.info:
        return None
    try:
        return image.getexif().get(_EXIF_ORIENTATION)
    except Exception:  # a malformed EXIF block only loses the rotation, never the image
        return None


def decode(data: bytes, limits: Limits = Limits()) -> Image.Image:
    """Decode an upload to an RGB image: first frame, EXIF orientation applied, transparency over white."""
    probe(data, limits)
    with quiet():
        image = _open(data)
        try:
            image.seek(0)
            image.load()
            image = ImageOps.exif_transpose(image)
        except ImageError:
            raise
        except (OSError, SyntaxError, ValueError, EOFError, struct.error):
            raise ImageError("That image file is truncated or damaged and cannot be decoded.") from None
        return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """Flatten any Pillow mode to 8-bit RGB; transparency of any encoding (alpha channel,
    palette entry, tRNS colour key) is composited over white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        image = _high_depth_to_grey(image)
    elif "transparency" in image.info and image.mode in ("1", "L", "RGB", "P") or image.mode == "PA":
        image = image.convert("RGBA")
    elif image.mode in ("1", "P"):
        image = image.convert("RGB")
    if image.mode in ("LA", "La", "RGBa"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("RGB") if image.mode != "RGB" else image


def _high_depth_to_grey(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit and float greys to 8-bit "L" (or "LA" with a colour key's transparency).

    Float pixels that are not numbers are replaced, as viewers do, rather than refused: NaN by
    black, infinities by the brightest or darkest finite value. The scale comes from the finite
    values alone (one NaN used to make the whole picture black). An image with no finite value
    at all has nothing to show and is refused.
    """
    raw = np.asarray(image)
    array = raw.astype(np.float64)
    finite = np.isfinite(array)
    if not finite.all():
        if not finite.any():
            raise ImageError("That image's pixel values are all NaN or infinite; there is no picture in it.")
        values = array[finite]
        array = np.nan_to_num(array, nan=0.0, posinf=values.max(), neginf=values.min())
    peak = array.max(initial=0)
    top = 1.0 if image.mode == "F" and peak <= 1.0 else 65535.0 if peak > 255 else 255.0
    grey = Image.fromarray(np.clip(array / top * 255 + 0.5, 0, 255).astype(np.uint8), "L")
    key = image.info.get("transparency")
    if isinstance(key, int):
        grey.putalpha(Image.fromarray(np.where(raw == key, 0, 255).astype(np.uint8), "L"))
    return grey


def fit(width: int, height: int, max_side: int) -> tuple[int, int]:
    """The size that keeps the aspect ratio with the longer side at most max_side (never upscaled)."""
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def resize(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    return image if image.size == size else image.resize(size, Image.Resampling.LANCZOS)


_EXTENSIONS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "GIF": "gif"}


def _save(image: Image.Image, fmt: str, quality: int) -> bytes:
    buffer = io.BytesIO()
    if fmt == "PNG":
        image.save(buffer, "PNG", compress_level=3)  # zlib's fast end: 3x quicker than 6 for ~8% more bytes
    elif fmt == "JPEG":
        image.save(buffer, "JPEG", quality=quality, subsampling=0 if quality >= 90 else 2)
    else:
        image.save(buffer, "WEBP", quality=quality, method=4)
    return buffer.getvalue()


def encode(image: Image.Image, fmt: str = "auto", max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[bytes, str]:
    """Encode under max_bytes; returns (data, file extension).

    'auto' keeps PNG when it fits and otherwise moves to high-quality JPEG. When no quality
    step fits, the image is downscaled by the square root of the overshoot and tried again.
    """
    formats = {"auto": ["PNG", "JPEG"], "png": ["PNG"], "jpeg": ["JPEG"], "jpg": ["JPEG"], "webp": ["WEBP"]}[fmt]
    while True:
        for f in formats:
            for quality in (95, 90, 82, 72) if f != "PNG" else (0,):
                data = _save(image, f, quality)
                if len(data) <= max_bytes:
                    return data, _EXTENSIONS[f]
        scale = math.sqrt(max_bytes / len(data)) * 0.95
        size = (max(1, int(image.width * scale)), max(1, int(image.height * scale)))
        if min(size) < MIN_SIDE:
            raise TooLargeError(f"The result would not fit in {_mb(max_bytes)}, even scaled down; try a smaller size.")
        image = image.resize(size, Image.Resampling.LANCZOS)


def encoded_size(data: bytes) -> tuple[int, int]:
    """Width and height from an encoded image's header: what `encode` delivered after any downscaling."""
    with Image.open(io.BytesIO(data)) as image:
        return image.size


def encode_animation(frames: list[Image.Image], fmt: str, frame_ms: int, max_bytes: int) -> tuple[bytes, str]:
    """Encode a looping GIF or WebP under max_bytes, downscaling the frames until it fits."""
    while True:
        buffer = io.BytesIO()
        if fmt == "gif":
            frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=frame_ms, loop=0, disposal=1)
        else:
            frames[0].save(buffer, "WEBP", save_all=True, append_images=frames[1:], duration=frame_ms, loop=0, quality=88)
        if buffer.tell() <= max_bytes:
            return buffer.getvalue(), fmt
        scale = math.sqrt(max_bytes / buffer.tell()) * 0.95
        size = (max(1, int(frames[0].width * scale)), max(1, int(frames[0].height * scale)))
        if min(size) < MIN_SIDE:
            raise TooLargeError(f"The animation would not fit in {_mb(max_bytes)}, even scaled down; try fewer frames.")
        frames = [f.resize(size, Image.Resampling.LANCZOS) for f in frames]
