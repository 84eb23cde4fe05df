"""BLEU-1..4 and CIDEr-D: our implementation equals pycocoevalcap's on fixed, pre-tokenised captions."""
import random

import pytest

from mmfm.eval.captioning import bleu, caption_metrics, cider_d, tokenize

pycoco_bleu = pytest.importorskip("pycocoevalcap.bleu.bleu")
pycoco_cider = pytest.importorskip("pycocoevalcap.cider.cider")

WORDS = ("a the red blue green circle square star cross at top left right bottom small large of picture there is "
         "in centre two three photo drawing").split()


def _corpus(seed: int, n: int = 60):
    """Random candidates/references with 1..5 references each; an empty and an exact-match candidate."""
    rng = random.Random(seed)
    sentence = lambda: " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12)))
    refs = {i: [sentence() for _ in range(rng.randint(1, 5))] for i in range(n)}
    cands = {i: [sentence()] for i in range(n)}
    cands[3] = [""]
    cands[4] = [refs[4][0]]
    return cands, refs


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bleu_equals_pycocoevalcap(seed):
    cands, refs = _corpus(seed)
    expected, expected_per_image = pycoco_bleu.Bleu(4).compute_score(refs, cands, verbose=0)
    ours, per_image = bleu(cands, refs)
    assert ours == pytest.approx(expected, rel=1e-12, abs=1e-15)
    for n in range(4):
        assert per_image[n] == pytest.approx(expected_per_image[n], rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cider_d_equals_pycocoevalcap(seed):
    cands, refs = _corpus(seed)
    expected, expected_per_image = pycoco_cider.Cider().compute_score(refs, cands)
    ours, per_image = cider_d(cands, refs)
    assert ours == pytest.approx(float(expected), rel=1e-12)
    assert per_image == pytest.approx(list(expected_per_image), rel=1e-12, abs=1e-15)


def test_realistic_captions_equal_pycocoevalcap():
    refs = {"img1": ["a small red circle at the top left", "a red circle", "a drawing of a circle"],
            "img2": ["two blue squares", "there are two large blue squares", "a photo of two blue squares"],
            "img3": ["a large green star in the centre", "something green", "a star"]}
    cands = {"img1": ["a red circle at the top left"], "img2": ["two blue squares"], "img3": ["a green cross"]}
    b, _ = pycoco_bleu.Bleu(4).compute_score(refs, cands, verbose=0)
    c, _ = pycoco_cider.Cider().compute_score(refs, cands)
    ours = caption_metrics(cands, refs, tokenizer=None)
    assert [ours[f"BLEU-{n}"] for n in range(1, 5)] == pytest.approx(b, rel=1e-12)
    assert ours["CIDEr-D"] == pytest.approx(float(c), rel=1e-12)


def test_hand_cases():
    # A candidate equal to its only reference: every precision is 1 and there is no brevity penalty.
    scores, _ = bleu(["a red circle at the top"], [["a red circle at the top"]])
    assert scores == pytest.approx([1.0] * 4)
    # Half the unigrams right, no bigram: BLEU-1 = 0.5 (lengths equal), BLEU-2 ~ 0.
    scores, _ = bleu(["a blue square"], [["a red circle"]])
    assert scores[0] == pytest.approx(1 / 3) and scores[1] < 1e-6
    # Too short: brevity penalty exp(1 - 6/3) on a perfect precision.
    scores, _ = bleu(["a red circle"], [["a red circle at the top"]])
    assert scores[0] == pytest.approx(pytest.importorskip("math").exp(-1.0))
    # Sequences and dicts give the same numbers; mismatched inputs are errors.
    assert bleu(["a b"], [["a b"]])[0] == bleu({"x": "a b"}, {"x": ["a b"]})[0]
    with pytest.raises(ValueError):
        bleu(["a"], [["a"], ["b"]])
    with pytest.raises(ValueError):
        cider_d({"x": ["a"]}, {"y": ["a"]})


def test_tokenize_lowercases_and_drops_punctuation():
    assert tokenize("At the top-left, there's A Red circle.") == "at the top left there's a red circle"
