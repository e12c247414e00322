"""The handwriting benchmark's scoring: what it counts as a character read right, and how glyphs are compared."""

from __future__ import annotations

import numpy as np

from research.handwriting.evaluate import accuracy, centred, edit_distance, scored


def test_accuracy_is_one_minus_edits_over_the_reference_length():
    assert edit_distance("春眠不觉晓", "春眠觉晓了") == 2 and edit_distance("", "ab") == 2
    assert accuracy([("abcd", "abcd"), ("abcd", "abxd")]) == 1 - 1 / 8
    assert accuracy([("ab", "")]) == 0.0


def test_each_script_is_scored_on_its_own_characters():
    assert scored("chinese", "今天，天气 good 好！") == "今天天气好"
    assert scored("latin", "Good idea, 2 cups!") == "Goodidea2cups"
    assert scored("digits", "86-10 6275") == "86106275"
    assert scored("latin", "ｆｏｏ") == "foo"  # tesseract's full-width forms count as what they are


def test_centring_moves_the_ink_centroid_to_the_cell_centre_and_binarises():
    glyph = np.zeros((1, 64, 64), np.float32)
    glyph[0, 2:10, 50:60] = 0.8
    glyph[0, 30, 5] = 0.3  # faint: not ink
    (out,) = centred(glyph)
    rows, cols = np.nonzero(out)
    assert set(np.unique(out)) == {0.0, 1.0} and out.sum() == 80
    assert abs(rows.mean() + 0.5 - 32) <= 0.5 and abs(cols.mean() + 0.5 - 32) <= 0.5
