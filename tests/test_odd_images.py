"""Odd, hostile and huge files: each is processed correctly or refused with one sentence,
through the real pool and through the command line; never a traceback, a blank picture, library
chatter on stderr or a stalled worker."""

from __future__ import annotations

import asyncio
import io
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from models import images, samples
from models.cli import main as models_cli
from models.errors import UserError
from models.jobs import Job
from models.pool import InferencePool, PoolConfig
from odd_images import (CORPUS, colour_key_grey, colour_key_rgb, float_tiff_nan, gif_transparent_index, jpeg_corrupt_exif, save,
                        scan_bomb, scene, tiff_deflate_flipped)

THIN = {"thin-2048x16", "thin-1000x16"}  # at 512 px their short side shrinks to 4 and 8 px


def one_sentence(text: str, pattern: str) -> None:
    assert re.search(pattern, text), text
    assert "\n" not in text.strip() and "Traceback" not in text and text.strip().endswith(".")


def shown_size(data: bytes, max_side: int) -> tuple[int, int]:
    info = images.probe(data)
    return images.fit(info.width, info.height, max_side)


def assert_picture(data: bytes, size: tuple[int, int], like: Image.Image | None = None) -> None:
    """A real picture of the expected size: not blank and, for /fix, close to its input."""
    out = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float32)
    assert (out.shape[1], out.shape[0]) == size
    if like is not None:
        reference = np.asarray(images.resize(like, size), dtype=np.float32)
        assert np.abs(out - reference).mean() < reference.std() / 4 + 1  # deblurring moves pixels a little
    assert out.std() > 3  # a blank picture is one flat colour (std 0; JPEG ringing adds ~1)


def jobs_for(name: str, data: bytes) -> list[tuple[str, Job, int]]:
    side = 512 if name in THIN else 128
    return [
        ("fix", Job("fix", {"max_side": side}, {"photo": data}), side),
        ("preset", Job("stylize", {"max_side": side, "presets": "7"}, {"content": data}), side),
        ("style", Job("stylize", {"max_side": side, "strength": 0.5}, {"content": data, "style": samples.painting()}), side),
        ("as-style", Job("stylize", {"max_side": 128}, {"content": samples.photo("cat"), "style": data}), 128),
    ]


async def test_the_corpus_through_the_pool(real_weights):
    pool = InferencePool(PoolConfig(device="cpu", max_batch=4, batch_wait_s=0.01, max_queue=4 * len(CORPUS)))
    await pool.start()
    try:
        cases = [(name, kind, job, side, want, data) for name, (make, want) in CORPUS.items()
                 for data in [make()] for kind, job, side in jobs_for(name, data)]
        outcomes = await asyncio.gather(*(pool.submit(job) for _, _, job, _, _, _ in cases), return_exceptions=True)
        for (name, kind, job, side, want, data), outcome in zip(cases, outcomes):
            if kind == "as-style":
                content = samples.photo("cat")
                if want is None:
                    assert not isinstance(outcome, BaseException), (name, kind, outcome)
                    assert_picture(outcome.files[0].data, shown_size(content, side))
                else:
                    assert isinstance(outcome, UserError), (name, outcome)
                continue
            if want is not None:
                assert isinstance(outcome, UserError), (name, kind, outcome)
                one_sentence(str(outcome), want)
                continue
            assert not isinstance(outcome, BaseException), (name, kind, outcome)
            like = images.decode(data) if kind == "fix" else None
            assert_picture(outcome.files[0].data, shown_size(data, side), like)
        # huge preset weights are normalised exactly, or refused when they cannot even be added
        photo = samples.photo("cat")
        heavy = await pool.submit(Job("stylize", {"max_side": 128, "presets": "0:3e38,1:3e38"}, {"content": photo}))
        assert_picture(heavy.files[0].data, shown_size(photo, 128))
        assert heavy.info["presets"] == {0: 0.5, 1: 0.5}
        with pytest.raises(UserError) as caught:
            await pool.submit(Job("stylize", {"max_side": 128, "presets": "0:1e308,1:1e308"}, {"content": photo}))
        one_sentence(str(caught.value), "too large")
        # and the worker is still there for the next person
        after = await pool.submit(Job("fix", {"max_side": 96}, {"photo": photo}))
        assert_picture(after.files[0].data, shown_size(photo, 96), images.decode(photo))
    finally:
        await pool.close()


@pytest.mark.parametrize("make", [colour_key_rgb, colour_key_grey, gif_transparent_index])
def test_transparency_of_any_encoding_is_white(make):
    decoded = np.asarray(images.decode(make()))
    assert (decoded[:32, :32] == 255).all()  # the transparent square
    assert (decoded[30:34, 46:50] < 40).all()  # the dark disc beside it is still there


def test_non_finite_float_pixels_become_black_and_the_rest_keeps_its_scale():
    decoded = np.asarray(images.decode(float_tiff_nan()))[..., 0].astype(int)
    grey = np.asarray(scene().convert("L"), dtype=np.float32) / 255  # what the TIFF holds
    expected = (grey * 255 + 0.5).astype(int)
    assert (decoded[:10, :10] == 0).all()  # NaN
    assert decoded[10, 10] == expected[np.isfinite(grey)].max()  # +inf: the brightest finite value
    rest = np.ones_like(decoded, bool)
    rest[:11, :11] = False
    assert np.abs(decoded[rest] - expected[rest]).max() <= 1
    with pytest.raises(images.ImageError, match="NaN or infinite"):
        images.decode(save(Image.fromarray(np.full((20, 20), np.nan, np.float32), "F"), "TIFF"))


def test_scans_are_counted_in_the_stream_not_in_metadata():
    progressive = scan_bomb(0)
    plain = save(scene(), "JPEG")
    scans = images.jpeg_scans(progressive)
    assert 1 < scans <= images.MAX_JPEG_SCANS and images.jpeg_scans(plain) == 1
    # a whole progressive JPEG inside a comment segment adds no scan
    comment = b"\xff\xfe" + (len(progressive) + 2).to_bytes(2, "big") + progressive
    assert images.jpeg_scans(plain[:2] + comment + plain[2:]) == 1
    bomb = scan_bomb(images.MAX_JPEG_SCANS)
    assert images.jpeg_scans(bomb) > images.MAX_JPEG_SCANS
    assert images.jpeg_scans(scan_bomb(images.MAX_JPEG_SCANS - scans)) == images.MAX_JPEG_SCANS
    images.decode(scan_bomb(images.MAX_JPEG_SCANS - scans))  # at the bound it still decodes


def run_cli(argv: list[str], capfd) -> tuple[int, str]:
    code = models_cli([*argv, "--device", "cpu"])
    return code, capfd.readouterr().err


def test_the_corpus_through_the_command_line(tmp_path, real_weights, capfd):
    for name, (make, want) in CORPUS.items():
        source = tmp_path / f"{name}.img"
        source.write_bytes(data := make())
        side = 512 if name in THIN else 128
        commands = [["fix", str(source), "-o", str(tmp_path / "out.png"), "--max-side", str(side)]]
        if name in THIN:
            commands.append(["stylize", str(source), "--preset", "7", "-o", str(tmp_path / "out.png"), "--max-side", str(side)])
        for argv in commands:
            code, err = run_cli(argv, capfd)
            if want is None:
                assert code == 0 and err == "", (name, err)  # no library chatter either (fd 2 is captured)
                assert_picture((tmp_path / "out.png").read_bytes(), shown_size(data, side))
            else:
                assert code == 2, (name, err)
                assert err.startswith("easel: ")
                one_sentence(err, want)


def test_inputs_are_refused_by_size_before_they_are_read(tmp_path, capfd):
    sparse = tmp_path / "huge.png"
    with sparse.open("wb") as file:
        file.truncate(7 * 2**30)  # sparse: 7 GB long, nothing stored
    code, err = run_cli(["fix", str(sparse), "-o", str(tmp_path / "o.png")], capfd)
    assert code == 2
    one_sentence(err, r"That file is 7168\.0 MB; the limit is 25\.0 MB")  # its size, from stat alone
    code, err = run_cli(["fix", "/dev/zero", "-o", str(tmp_path / "o.png")], capfd)
    assert code == 2
    one_sentence(err, r"That file is over 25\.0 MB; the limit is 25\.0 MB")  # one bounded read


def test_output_paths_are_checked_before_the_work(tmp_path, capfd):
    """`--device tpu` would fail when the pool starts: an output error that shows instead came first."""
    photo = tmp_path / "cat.jpg"
    photo.write_bytes(samples.photo("cat"))
    (tmp_path / "folder.png").mkdir()
    (tmp_path / "file").write_text("x")
    cases = [
        (["-o", str(tmp_path / "folder.png")], "folder.png: it is a folder"),
        (["-o", str(tmp_path / "file" / "o.png")], "file is a file, not a folder"),
        (["-o", str(tmp_path / "o.png"), "--compare", str(tmp_path / "cmp.xyz")], r"\.png, \.jpg or \.webp file, not cmp\.xyz"),
        (["-o", str(tmp_path / "o.png"), "--compare", str(tmp_path / "file" / "c.png")], "file is a file, not a folder"),
    ]
    for extra, words in cases:
        assert models_cli(["fix", str(photo), *extra, "--device", "tpu"]) == 2
        err = capfd.readouterr().err
        assert err.startswith("easel: Cannot write") or "cmp.xyz" in err
        one_sentence(err, words)


def test_compare_follows_its_extension_and_gets_its_folders(tmp_path, real_weights, capfd):
    photo = tmp_path / "cat.jpg"
    photo.write_bytes(samples.photo("cat"))
    compare = tmp_path / "new" / "deeper" / "cmp.jpg"
    code, err = run_cli(["fix", str(photo), "-o", str(tmp_path / "o.webp"), "--max-side", "128", "--compare", str(compare)], capfd)
    assert code == 0 and err == ""
    assert Image.open(compare).format == "JPEG" and Image.open(tmp_path / "o.webp").format == "WEBP"


def test_library_warnings_never_reach_stderr(tmp_path, real_weights):
    """libtiff writes to the C-level stderr: only a separate process sees what really reaches fd 2."""
    (tmp_path / "bad.tif").write_bytes(tiff_deflate_flipped())  # libtiff: "ZIPDecode: Decoding error ..."
    (tmp_path / "exif.jpg").write_bytes(jpeg_corrupt_exif())  # Pillow: "UserWarning: Truncated File Read"
    script = ("import sys; from models.cli import main; "
              "codes = [main(['fix', a, '-o', sys.argv[3], '--max-side', '64', '--device', 'cpu']) for a in sys.argv[1:3]]; "
              "print(codes)")
    run = subprocess.run([sys.executable, "-c", script, str(tmp_path / "bad.tif"), str(tmp_path / "exif.jpg"),
                          str(tmp_path / "o.png")], capture_output=True, text=True, check=False)
    assert run.stdout.strip().endswith("[2, 0]"), run.stdout + run.stderr
    assert run.stderr == "easel: That image file is truncated or damaged and cannot be decoded.\n"


def test_long_work_shows_progress_on_a_terminal(tmp_path, real_weights, monkeypatch):
    import os
    import pty

    photo = tmp_path / "photo.png"
    photo.write_bytes(save(scene(640, 480), "PNG"))  # several /fix tiles, so several fractions
    leader, follower = pty.openpty()
    with open(follower, "w", closefd=True) as terminal:
        monkeypatch.setattr(sys, "stderr", terminal)
        assert models_cli(["fix", str(photo), "-o", str(tmp_path / "o.png"), "--device", "cpu"]) == 0
    shown = os.read(leader, 65536).decode()
    os.close(leader)
    fractions = [int(f) for f in re.findall(r"fix: (\d+)% done", shown)]
    assert len(fractions) >= 2 and fractions == sorted(fractions) and fractions[-1] == 100
    assert shown.endswith("\r\033[K")  # the status line is cleared when the work ends
