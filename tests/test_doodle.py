"""/doodle's product side: text checks, a layout that looks written, paper and ink, the pool task and the CLI.

The model itself (models/handwriting/model.py) is tested with its training code; here it is the
committed one, run through the same pool the bot uses.
"""

from __future__ import annotations

import asyncio
import io
import math
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from models.cli import main as cli
from models.handwriting import charset, layout, page, text
from models.handwriting.layout import Placement
from models.jobs import Job, Result
from models.pool import InferencePool, PoolConfig
from models.tasks.base import Plan
from models.tasks.doodle import MAX_LINES, Doodle

SENTENCE = "春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。| The quick brown fox jumps over the lazy dog, 1234567890 times!"


def lines(s: str) -> list[str]:
    return text.lines(s, charset.covers)


# -- text ------------------------------------------------------------------------------------------

def test_bars_and_newlines_start_lines_and_outer_blanks_go():
    assert lines(" | 你好 |world\n\n second | ") == ["你好", "world", "", "second"]


def test_joiners_and_variation_selectors_draw_nothing_of_their_own():
    assert lines("家👨\u200d👩\u200d👧 ok\ufe0f") == ["家👨👩👧 ok"]  # three boxes, no box for a joiner


def test_full_width_forms_are_written_as_their_plain_letters():
    assert lines("Ｈｉ！") == ["Hi！"]  # ！ is in the charset itself; Ｈ and ｉ fold to H and i


@pytest.mark.parametrize("bad, words", [("", "Give me some text"), (" | ", "Give me some text"), ("x" * 201, "at most 200"),
                                        ("☃ 𠀀 ♫", "can't write any of those")])
def test_text_it_cannot_write_is_one_sentence(bad, words):
    with pytest.raises(text.TextError, match=words) as error:
        lines(bad)
    assert str(error.value).endswith(".") and "\n" not in str(error.value)


# -- layout ----------------------------------------------------------------------------------------

def bar(width: int) -> np.ndarray:
    """A glyph cell with a block of ink `width` columns wide, standing on the baseline."""
    ink = np.zeros((64, 64), np.float32)
    ink[20:layout.BASELINE, 32 - width // 2:32 - width // 2 + width] = 1
    return ink


def test_letters_advance_by_their_ink_and_ideographs_by_a_square():
    narrow, wide = layout.measure("i", bar(4)), layout.measure("m", bar(30))
    assert narrow.advance < 0.5 * wide.advance
    assert layout.measure("永", bar(40)).advance == layout.measure("一", bar(40)).advance >= 0.8 * layout.EM
    assert layout.measure(" ", None).advance < layout.measure("\u3000", None).advance == layout.EM


def test_wrapping_keeps_words_whole_and_never_starts_a_line_with_closing_punctuation():
    def advance(ch: str) -> float:
        return layout.EM if "\u4e00" <= ch <= "\u9fff" or ch in "，。" else 20.0
    wrapped = layout.wrap(["hello wonderful world of words"], advance, max_width=8 * 20)
    for line in wrapped:
        assert sum(map(advance, line)) <= 8 * 20 and not line.startswith((" ", "，"))
    latin = [w for w in wrapped if w.isascii()]
    assert latin[0] == "hello" and "".join(latin).replace(" ", "") == "hellowonderfulworldofwords"
    assert "world" in {word for line in latin for word in line.split()}  # a word that fits is never cut
    assert layout.wrap(["一二三四五六七八，九十"], advance, max_width=8 * layout.EM) == ["一二三四五六七", "八，九十"]
    assert layout.wrap(["一二三四五六。Hello"], advance, max_width=8 * layout.EM) == ["一二三四五六。", "Hello"]  # a break after 。


def placements(seed: int, neatness: float, text_lines: list[str] | None = None) -> list[Placement]:
    text_lines = text_lines or lines(SENTENCE)
    metrics = {ch: layout.measure(ch, bar(12 if ch.isascii() else 44)) for line in text_lines for ch in line}
    return layout.lay_out(text_lines, metrics, seed, neatness)


def test_the_seed_fixes_the_layout_and_another_seed_moves_every_glyph():
    a, b = placements(1, 0.3), placements(2, 0.3)
    assert a == placements(1, 0.3)
    assert [p.char for p in a] == [p.char for p in b] and all((p.cx, p.cy) != (q.cx, q.cy) for p, q in zip(a, b))


def test_glyphs_wander_and_turn_a_little_and_neatness_calms_them():
    def unsteadiness(neatness: float) -> tuple[float, float]:
        ps = placements(5, neatness, ["永" * 18])
        angles = np.array([p.angle for p in ps])
        ys = np.array([p.cy for p in ps])
        xs = np.array([p.cx for p in ps])
        assert np.all(np.diff(xs) > 0.5 * layout.EM)  # left to right, never on top of each other
        return float(np.std(angles)), float(np.std(ys - np.polyval(np.polyfit(xs, ys, 1), xs)))
    messy, neat = unsteadiness(0.0), unsteadiness(1.0)
    assert 0 < messy[0] < math.radians(4) and 0.3 < messy[1] < 6  # not a grid, not a mess
    assert neat[0] < messy[0] and neat[1] < messy[1]


def test_no_glyph_advances_past_its_widest():
    rng = np.random.default_rng(0)
    for ch in "iWm—%,永一，。☃國 \u3000":
        inks = [None, layout.FULL_CELL] + [bar(int(w)) for w in rng.integers(1, 64, 20)]
        assert all(layout.measure(ch, ink).advance <= layout.widest(ch) for ink in inks), ch


def test_wider_glyphs_never_wrap_into_fewer_lines():
    """Why `layout.extent` (every glyph at its widest) has at least the lines of any page written."""
    rng = np.random.default_rng(1)
    alphabet = list("aWim—,.;|") + list("永一，。、") + [" "] * 3 + ["\u3000"]
    for _ in range(300):
        text_lines = "".join(rng.choice(alphabet, rng.integers(1, 200))).split("|")
        narrower = {ch: rng.uniform(0.2, 1.0) for ch in alphabet}
        hand = rng.uniform(0.85, 1.2)
        written = layout.wrap(text_lines, lambda ch: narrower[ch] * layout.widest(ch) * hand)
        assert len(written) <= len(layout.wrap(text_lines, lambda ch: layout.widest(ch) * hand))


# -- page ------------------------------------------------------------------------------------------

def test_a_turned_and_scaled_glyph_keeps_its_ink_in_proportion():
    glyph = bar(20)
    p = Placement("m", 100.3, 50.7, 1.2, math.radians(8), 1.0)
    sheet = page.draw([p], {"m": glyph}, page.fallback_glyph(glyph))
    assert sheet.ink.sum(dtype=np.int64) / 255 == pytest.approx(glyph.sum() * 1.2**2, rel=0.03)
    rows, cols = np.nonzero(sheet.ink > 127)
    centre = (cols.mean() + 0.5 - sheet.origin[0], rows.mean() + 0.5 - sheet.origin[1])  # pixel centres
    # the block's centre (column 32, row 33) lands at the placement, scaled and turned about the cell centre
    assert centre == pytest.approx((p.cx - 1.2 * math.sin(p.angle) * 1, p.cy + 1.2 * math.cos(p.angle) * 1), abs=0.6)


def test_ink_goes_on_paper_and_fallbacks_are_grey():
    glyph = bar(20)
    sheet = page.draw([Placement("m", 40, 40, 1, 0, 1), Placement("☃", 110, 40, 1, 0, 1)], {"m": glyph}, page.fallback_glyph(glyph))
    picture = np.asarray(page.paint(sheet, page.ink_box([sheet]), "red"))
    colours = {tuple(c) for c in picture.reshape(-1, 3)}
    assert page.PAPER in colours and page.INKS["red"] in colours and page.FALLBACK_GREY in colours


# -- bounds and cost, from the text alone -------------------------------------------------------------

ZH_200 = "".join(charset.CHARSET[-3755:][::18][:200])  # 200 distinct ideographs: the most the network writes
TALLEST = ("永" * 13 + "|" * 47 + "a", 14089)  # 48 lines, as wide as they go, in a large hand (seed 14089 at neatness 0)
HOSTILE = "W" * 30 + "|" * 169 + "W"


def plan(**options) -> Plan:
    return Doodle().plan(Job("doodle", {"seed": 7, **options}), None)


def one_sentence(error: Exception) -> str:
    message = str(error)
    assert message.endswith(".") and "\n" not in message and message.count(". ") == 0
    return message


@pytest.mark.parametrize("mode", ["write", "morph"])
def test_a_page_too_tall_is_refused_in_one_sentence(mode):
    with pytest.raises(text.TextError) as error:
        plan(text=HOSTILE, mode=mode)
    assert one_sentence(error.value) == "That text would make a page of 171 lines; I write at most 48 lines."


def test_a_tall_page_morphs_in_fewer_frames():
    tallest, seed = TALLEST
    assert layout.extent(lines(tallest), seed, 0.0).lines == MAX_LINES
    assert plan(text=tallest, seed=seed, neatness=0.0, mode="morph", frames=21).cost > 0
    with pytest.raises(text.TextError) as error:
        plan(text=tallest, seed=seed, neatness=0.0, mode="morph", frames=22)
    assert one_sentence(error.value) == "That text makes a page of 48 lines, so a morph of it has at most 21 frames."
    with pytest.raises(text.TextError, match="I write at most 48 lines"):
        plan(text=tallest + "|a", seed=seed, neatness=0.0)


@pytest.mark.parametrize("options", [{"text": ZH_200}, {"text": ZH_200, "mode": "morph"},
                                     {"text": ZH_200, "mode": "morph", "frames": 48},
                                     {"text": "|".join(ZH_200[i:i + 49] for i in range(0, 196, 49)), "mode": "morph", "frames": 48},
                                     {"text": SENTENCE, "mode": "morph", "frames": 48},
                                     {"text": "|".join(["床前明月光", "疑是地上霜", "举头望明月", "低头思故乡"] * 8), "mode": "morph"}])
def test_ordinary_texts_fit_the_bounds_in_every_hand(options):
    for seed in range(40):
        for neatness in (0.0, 1.0):
            plan(**options, seed=seed, neatness=neatness)


# CPU seconds of whole jobs on one core of the bot's CPU (the network, then the page and its file;
# each part timed in a fresh process): their cost should be their time at about one rate.
MEASURED_S = [({"text": "Hello"}, 0.023), ({"text": SENTENCE}, 0.173), ({"text": ZH_200}, 0.522),
              ({"text": ZH_200, "mode": "morph"}, 2.742), ({"text": ZH_200, "mode": "morph", "frames": 48}, 6.634),
              ({"text": "你好 hello", "mode": "morph", "frames": 48}, 0.298), ({"text": "W" * 200, "mode": "morph"}, 0.699),
              ({"text": SENTENCE, "mode": "morph", "frames": 8}, 0.443),
              ({"text": TALLEST[0], "seed": TALLEST[1], "neatness": 0.0, "mode": "morph"}, 2.141),
              ({"text": "永" * 13 + "|" * 15 + "a", "seed": TALLEST[1], "neatness": 0.0, "mode": "morph", "frames": 48}, 2.245)]


def test_cost_is_the_time_a_job_takes_at_about_one_rate():
    rates = [seconds / plan(**options).cost for options, seconds in MEASURED_S]
    assert max(rates) / min(rates) < 2  # the glyph count alone (the cost before) spread them 0.3-29 s per unit


def test_cost_grows_with_the_page_and_its_frames_not_only_the_glyphs():
    tallest, seed = TALLEST
    short, tall = ("永" * 13 + "|" * 11 + "a", tallest)  # 12 and 48 lines of the same two glyphs
    cost = {(t, frames): plan(text=t, seed=seed, neatness=0.0, mode="morph", frames=frames).cost for t in (short, tall) for frames in (8, 16)}
    assert 3 < cost[tall, 16] / cost[short, 16] < 4.5  # four times the page
    assert 1.7 < cost[tall, 16] / cost[tall, 8] < 2.1  # twice the frames
    assert plan(text="Hello").cost < cost[short, 8] / 10  # twice the glyphs, a tiny page


def test_a_seedless_job_is_planned_in_the_hand_it_is_written_in():
    job = Job("doodle", {"text": "你好"})
    assert Doodle().prepare(job, None).seed == Doodle().prepare(job, None).seed
    assert Doodle().prepare(job, None).seed != Doodle().prepare(Job("doodle", {"text": "你好"}), None).seed


def test_the_tallest_morph_is_composed_within_its_memory():
    """21 frames, the most of 48 lines, are 12 distinct sheets kept until all are drawn: 8-bit ones take about
    100 MB, float ones took 400."""
    tallest, seed = TALLEST
    wide = np.zeros((64, 64), np.float32)
    wide[10:56, 2:62] = 1  # ink as wide as a glyph goes
    page.fallback()
    tracemalloc.start()
    try:
        pictures = page.compose(lines(tallest), [{"永": wide, "a": wide}] * 12, seed, 0.0, "blue")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(pictures) == 12 and pictures[0].height > 4000 and peak < 120 * 2**20


# -- through the pool ------------------------------------------------------------------------------

def doodle(*jobs: Job, max_batch: int = 8) -> list[Result]:
    async def go() -> list[Result]:
        pool = InferencePool(PoolConfig(device="cpu", max_batch=max_batch, batch_wait_s=0.05, warmup=False, tasks=("doodle",)))
        await pool.start()
        try:
            return await asyncio.gather(*(pool.submit(job) for job in jobs))
        finally:
            await pool.close()
    return asyncio.run(go())


def picture(result: Result) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(result.files[0].data)).convert("RGB"), np.int16)


def close_pictures(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to float rounding reaching the 8-bit file: the network may run in different batch
    shapes (oneDNN picks kernels per shape), which can move an edge pixel by a level or two."""
    return a.shape == b.shape and np.abs(a - b).max() <= 3 and np.abs(a - b).mean() <= 0.05


def test_a_request_is_written_the_same_alone_or_batched_and_each_seed_is_its_own_page():
    text_100 = (SENTENCE * 2)[:100]
    together = doodle(*(Job("doodle", {"text": text_100, "seed": s}) for s in (11, 12, 11)))
    (alone,) = doodle(Job("doodle", {"text": text_100, "seed": 11}), max_batch=1)
    assert together[0].info["batch"] == 3 and alone.info["batch"] == 1
    assert close_pictures(picture(together[0]), picture(alone)) and close_pictures(picture(together[0]), picture(together[2]))
    a, b = picture(together[0]), picture(together[1])
    assert a.shape != b.shape or np.abs(a - b).mean() > 2
    assert together[0].info["seed"] == 11 and together[0].info["text"] == text_100
    ink = np.all(a == page.PAPER, axis=-1)
    assert 0.03 < 1 - ink.mean() < 0.5  # written on, not blank, not flooded


def test_characters_outside_the_set_are_boxed_and_named():
    (result,) = doodle(Job("doodle", {"text": "雪人☃ snow", "seed": 3, "ink": "green"}))
    assert result.info["unwritten"] == "☃"
    r, g, b = np.moveaxis(picture(result), -1, 0)
    assert np.any((abs(r - g) <= 2) & (abs(g - b) <= 2) & (g < 200))  # the grey box
    assert np.any(g - r > 40)  # green ink


def test_a_morph_loops_from_one_hand_to_another_writing_the_same_text():
    write, morph = doodle(Job("doodle", {"text": "你好 hello", "seed": 4}),
                          Job("doodle", {"text": "你好 hello", "seed": 4, "seed_b": 9, "mode": "morph", "frames": 8}))
    animation = Image.open(io.BytesIO(morph.files[0].data))
    assert morph.files[0].name == "morph.gif" and animation.n_frames == 8 and morph.info["seed_b"] == 9
    frames = []
    for i in range(animation.n_frames):
        animation.seek(i)
        frames.append(np.asarray(animation.convert("RGB"), np.int16))
    assert np.abs(frames[1] - frames[7]).mean() < np.abs(frames[1] - frames[4]).mean() + 1e-9  # there and back

    def ink(picture: np.ndarray) -> int:
        return int((picture.sum(-1) < sum(page.PAPER) - 120).sum())
    assert ink(frames[0]) == pytest.approx(ink(picture(write)), rel=0.1)  # its first frame is the still, in a GIF's palette


@pytest.mark.parametrize("options, words", [({"text": ""}, "Give me some text"), ({"text": "☃"}, "can't write"),
                                            ({"text": "hi", "ink": "gold"}, "ink must be one of"),
                                            ({"text": "hi", "neatness": 2}, "neatness must be between 0 and 1")])
def test_bad_requests_are_refused_before_they_queue(options, words):
    from models.tasks import TASKS
    from models.options import OptionError

    with pytest.raises((text.TextError, OptionError), match=words):
        TASKS["doodle"].plan(Job("doodle", options), None)


def test_cli_writes_a_page_and_a_morph(tmp_path, capsys):
    out, gif = tmp_path / "hand.png", tmp_path / "hand.gif"
    assert cli(["doodle", "你好，world | 123", "--seed", "8", "--ink", "black", "-o", str(out), "--device", "cpu"]) == 0
    assert '"seed": 8' in capsys.readouterr().out and Image.open(out).format == "PNG"
    assert cli(["doodle", "你好", "--seed", "8", "--morph-to", "9", "--frames", "6", "-o", str(gif), "--device", "cpu"]) == 0
    assert Image.open(gif).n_frames == 6
    assert cli(["doodle", "☃", "-o", str(out)]) == 2
    assert "can't write any of those" in capsys.readouterr().err
