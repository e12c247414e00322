"""The command lines: model commands work without Discord; mistakes are one sentence and status 2."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
from PIL import Image

from bot.cli import main as easel
from models import samples
from models.cli import main as models_cli


def test_stylize_dream_and_fix_write_images(tmp_path, real_weights, capsys):
    (tmp_path / "cat.jpg").write_bytes(samples.photo("cat"))
    (tmp_path / "painting.png").write_bytes(samples.painting(256))
    cases = [
        (["stylize", "cat.jpg", "painting.png", "-o", "a.png", "--max-side", "200", "--strength", "0.7"], "a.png", (200, 133)),
        (["stylize", "cat.jpg", "--preset", "3:0.5,12:0.5", "-o", "b.jpg", "--max-side", "200"], "b.jpg", (200, 133)),
        (["dream", "-n", "4", "--seed", "9", "-o", "c.webp"], "c.webp", (2 * 128 + 3 * 4, 2 * 128 + 3 * 4)),
        (["dream", "--seed", "9", "--morph-to", "10", "--frames", "8", "-o", "d.gif"], "d.gif", (128, 128)),
        (["fix", "cat.jpg", "-o", "e.png", "--compare", "f.png"], "e.png", (451, 300)),
    ]
    for argv, out, size in cases:
        argv = [str(tmp_path / a) if a.endswith((".jpg", ".png", ".webp", ".gif")) else a for a in argv]
        assert models_cli([*argv, "--device", "cpu"]) == 0
        assert Image.open(tmp_path / out).size == size
    assert Image.open(tmp_path / "d.gif").n_frames == 8
    assert (tmp_path / "f.png").stat().st_size > 0
    assert '"seed": 9' in capsys.readouterr().out


@pytest.mark.parametrize("argv, words", [
    (["stylize", "missing.jpg", "--preset", "1", "-o", "x.png"], "Cannot read"),
    (["stylize", "{cat}", "--preset", "26", "-o", "x.png"], "0 to 25"),
    (["stylize", "{cat}", "-o", "x.png"], "STYLE image, or --preset"),
    (["stylize", "{cat}", "--preset", "1", "-o", "x.bmp"], ".png, .jpg or .webp"),
    (["stylize", "{notes}", "--preset", "1", "-o", "x.png"], "not an image"),
    (["dream", "--seed", "1", "--morph-to", "2", "-o", "x.png"], ".gif or .webp"),
    (["dream", "-n", "40", "-o", "x.png"], "between 1 and 16"),
    (["fix", "{cat}", "--strength", "2", "-o", "x.png"], "between 0 and 1"),
    (["fix", "{cat}", "-o", "x.png", "--device", "tpu"], "auto, cpu, cuda"),
])
def test_mistakes_exit_2_with_one_sentence(tmp_path, argv, words, capsys, real_weights):
    (tmp_path / "cat.jpg").write_bytes(samples.photo("cat"))
    (tmp_path / "notes.txt").write_text("notes")
    argv = [a.replace("{cat}", str(tmp_path / "cat.jpg")).replace("{notes}", str(tmp_path / "notes.txt")) for a in argv]
    argv = [str(tmp_path / a) if a.startswith("x.") else a for a in argv]
    assert easel(argv) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and err.startswith("easel: ") and "\n" not in err and "Traceback" not in err


def test_run_without_a_token_says_what_to_set(tmp_path):
    done = subprocess.run([sys.executable, "-m", "bot"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert done.returncode != 0
    assert "Set DISCORD_TOKEN" in done.stderr and "Traceback" not in done.stderr


def test_run_rejects_a_mistyped_setting(tmp_path):
    (tmp_path / ".env").write_text("DISCORD_TOKEN=abc\nEASEL_DEVISE=cpu\n")
    done = subprocess.run([sys.executable, "-m", "bot"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert done.returncode != 0 and "Unknown setting EASEL_DEVISE" in done.stderr
