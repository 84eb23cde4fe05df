"""VQAv2 accuracy: answer normalisation and the leave-one-out "3 of 10 humans" score on hand-made cases."""
import pytest

from mmfm.eval.vqa import normalize_answer, vqa_accuracy, vqa_score


@pytest.mark.parametrize("raw, normal", [
    ("Two", "2"),                       # number words -> digits, lower case
    ("none", "0"),
    ("the dog", "dog"),                 # articles dropped
    ("a red circle", "red circle"),
    ("Yes.", "yes"),                    # final period dropped
    ("3.5", "3.5"),                     # ...but not a decimal point
    ("1,000", "1000"),                  # digit-comma-digit: commas vanish
    ("black/white", "black white"),     # a mark between words becomes a space
    ("red, blue", "red blue"),          # a mark next to a space just goes
    ("dont", "don't"),                  # apostrophe-less contractions restored
    ("isnt it", "isn't it"),
    ("  left\tside\n", "left side"),    # whitespace
])
def test_normalize_answer(raw, normal):
    assert normalize_answer(raw) == normal


def test_score_counts_humans_leave_one_out():
    assert vqa_score("red", ["red"] * 10) == 1.0
    assert vqa_score("blue", ["red"] * 10) == 0.0
    # 1 of 10 humans: 9 subsets contain them (1/3 each), one does not (0) -> 0.3
    assert vqa_score("red", ["red"] + ["blue"] * 9) == pytest.approx(0.3)
    # 2 of 10: 8 subsets with both (2/3), 2 with one (1/3) -> 0.6
    assert vqa_score("red", ["red"] * 2 + ["blue"] * 8) == pytest.approx(0.6)
    # 3 of 10: 7 subsets with all three (1), 3 with two (2/3) -> 0.9
    assert vqa_score("red", ["red"] * 3 + ["blue"] * 7) == pytest.approx(0.9)
    # 4 or more: every subset has at least 3 -> 1
    assert vqa_score("red", ["red"] * 4 + ["blue"] * 6) == 1.0


def test_score_normalises_both_sides():
    assert vqa_score("Two", ["2"] * 10) == 1.0
    assert vqa_score("the circle.", ["circle"] * 3 + ["star"] * 7) == pytest.approx(0.9)


def test_single_reference_is_exact_match_and_accuracy_is_the_mean():
    assert vqa_score("Red", ["red"]) == 1.0
    assert vqa_accuracy(["red", "circle", "two"], [["red"], ["star"], ["2"]]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        vqa_accuracy(["red"], [["red"], ["blue"]])
    with pytest.raises(ValueError):
        vqa_score("red", [])
