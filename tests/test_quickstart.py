"""README's main-job commands as a newcomer runs them: `easel demo` and `easel bench`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image


def easel(*args: str, cwd) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bot.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_demo_answers_every_command_and_saves_the_replies(tmp_path, real_weights):
    done = easel("demo", "--out", "replies", "--device", "cpu", cwd=tmp_path)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    saved = sorted(p.name for p in (tmp_path / "replies").iterdir() if p.suffix != ".json")
    assert saved == ["1-stylize-stylized.png", "2-stylize-preset-stylized.png", "3-dream-faces.png",
                     "4-dream-morph-morph.gif", "5-fix-before-after.png", "5-fix-fixed.png", "8-doodle-doodle.png",
                     "9-doodle-morph-morph.gif"]
    for name in saved:
        with Image.open(tmp_path / "replies" / name) as image:
            assert min(image.size) >= 128
    assert done.stdout.count("acknowledged in") == 11
    replies = {row["step"]: row for row in json.loads((tmp_path / "replies" / "replies.json").read_text())}
    assert all(replies[f"{i}-{step}"]["everyone_sees"] for i, step in enumerate(
        ("stylize", "stylize-preset", "dream", "dream-morph", "fix"), start=1))
    assert replies["8-doodle"]["everyone_sees"] and replies["9-doodle-morph"]["everyone_sees"]
    (bad_upload,) = replies["6-bad-upload"]["only_the_asker_sees"]  # found after the download, so after the defer
    (refusal,) = replies["7-refused-cooldown"]["only_the_asker_sees"]  # before it
    assert "truncated" in bad_upload and "cooldown" in refusal
    assert not replies["6-bad-upload"]["everyone_sees"] and not replies["7-refused-cooldown"]["everyone_sees"]
    assert "only the asker sees: You're on cooldown" in done.stdout
    assert replies["10-cancelled"]["only_the_asker_sees"] == ["🛑 Cancelled, as you asked."] and not replies["10-cancelled"]["everyone_sees"]
    deleted = replies["11-deleted"]  # the /dream grid of step 3, deleted by its asker
    assert not deleted["everyone_sees"] and "seed **2024**" in deleted["deleted_from_the_channel"][0]
    assert f"All replies are in {tmp_path / 'replies'}" in done.stdout


@pytest.mark.slow
def test_bench_prints_json_for_the_pool_and_the_onnxruntime_comparison(tmp_path, real_weights):
    done = easel("bench", "--scenarios", "dream", "--concurrency", "1,4", "--jobs-per-client", "2", "--repeat", "1",
                 "--device", "cpu", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    rows = {(r["concurrency"], r["batching"]): r for r in report["pool"]}
    assert set(rows) == {(1, True), (4, True), (1, False), (4, False)}
    for row in rows.values():
        assert row["jobs"] == 8 and row["images_per_s"] == pytest.approx(4 * row["jobs_per_s"], rel=0.01)
        assert 0 < row["latency_p50_s"] <= row["latency_p95_s"] and row["loop_lag_max_ms"] >= 0
    assert rows[(4, False)]["max_batch"] == 1 and rows[(4, True)]["max_batch"] == 8
    networks = [r["network"] for r in report["onnxruntime"]]
    assert networks == ["arbitrary style, 256 px style + 384 px content", "26 presets, 1024x1024"]
    assert all(r["ratio"] > 0 and r["torch_images_per_s"] > 0 for r in report["onnxruntime"])
    assert report["summary"]["max_loop_lag_ms"] == max(r["loop_lag_max_ms"] for r in report["pool"])
