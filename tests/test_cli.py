"""The command lines: model commands work without Discord; mistakes are one sentence and status 2."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys

import pytest
import torch
from PIL import Image

from bot.cli import main as easel
from bot.sandbox.emulator import DiscordEmulator
from models import samples
from models.cli import main as models_cli

UNREACHABLE = "http://127.0.0.1:9/api/v10"  # the discard port: nothing listens there


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


def run_bot(tmp_path, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m bot` in an empty folder with only these settings; it must fail with one sentence."""
    done = subprocess.run([sys.executable, "-m", "bot"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **env})
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    return done


def test_run_without_a_token_says_what_to_set(tmp_path):
    assert "Set DISCORD_TOKEN" in run_bot(tmp_path).stderr


def test_run_rejects_a_mistyped_setting(tmp_path):
    (tmp_path / ".env").write_text("DISCORD_TOKEN=abc\nEASEL_DEVISE=cpu\n")
    assert "Unknown setting EASEL_DEVISE" in run_bot(tmp_path).stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has the GPU the test asks for in vain")
def test_run_on_a_gpu_that_is_not_there_stops_before_connecting(tmp_path):
    done = run_bot(tmp_path, DISCORD_TOKEN="abc", EASEL_DEVICE="cuda", EASEL_DISCORD_API_BASE=UNREACHABLE)
    assert "PyTorch sees no CUDA device" in done.stderr and "Could not reach" not in done.stderr


def test_run_says_when_discord_cannot_be_reached(tmp_path):
    done = run_bot(tmp_path, DISCORD_TOKEN="abc", EASEL_DEVICE="cpu", EASEL_DISCORD_API_BASE=UNREACHABLE)
    assert f"Could not reach Discord at {UNREACHABLE}" in done.stderr


async def test_run_says_when_discord_rejects_the_token(tmp_path):
    emulator = DiscordEmulator()
    await emulator.start()
    try:
        env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "DISCORD_TOKEN": "not." + emulator.token,
               "EASEL_DISCORD_API_BASE": emulator.api_base, "EASEL_DEVICE": "cpu"}
        process = await asyncio.create_subprocess_exec(sys.executable, "-m", "bot", cwd=tmp_path, env=env,
                                                       stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        _, stderr = await asyncio.wait_for(process.communicate(), 120)
    finally:
        await emulator.stop()
    assert process.returncode != 0 and "Traceback" not in stderr.decode(), stderr.decode()[-3000:]
    assert "Discord rejected DISCORD_TOKEN" in stderr.decode()
