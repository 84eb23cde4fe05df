"""Captioning metrics: corpus BLEU-1..4 and CIDEr-D, computed as the COCO caption evaluation does.

Both take candidates and references keyed by image (a dict, or two aligned sequences) as
*pre-tokenised* strings: tokens separated by spaces. ``tokenize`` below is a dependency-free stand-in
for COCO's Java PTB tokenizer (lower case, punctuation removed); give already tokenised text to get
numbers equal to ``pycocoevalcap`` (tests check equality to 1e-12).

BLEU (Papineni et al., 2002), as pycocoevalcap's ``Bleu(4)`` computes it:
    * modified n-gram precision, pooled over the corpus: each candidate n-gram counts at most as often
      as it occurs in the reference that has it most often;
    * BLEU-n = (p_1 * ... * p_n)^(1/n) with tiny constants (1e-15 / 1e-9) guarding empty counts;
    * brevity penalty exp(1 - r/c) when the total candidate length c is below r, where r sums, per image,
      the reference length closest to the candidate's (ties go to the shorter reference).

CIDEr-D (Vedantam et al., 2015), as pycocoevalcap's ``Cider()``:
    * each sentence is a TF-IDF vector of its n-grams (n = 1..4); document frequencies count the images
      whose references contain the n-gram; idf = log(#images) - log(max(1, df));
    * per n: similarity to each reference = sum over the candidate's n-grams of min(cand, ref) * ref
      (the "-D" clipping) / (|cand| |ref|), times a Gaussian length penalty exp(-delta^2 / (2 sigma^2)),
      sigma = 6, where delta is the difference of the sentences' lengths (counted, as pycocoevalcap
      does, in bigrams);
    * image score = 10 * mean over n of the mean over references; corpus score = mean over images.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from typing import Mapping, Sequence

NGram = tuple[str, ...]

# pycocoevalcap's constants: keep zero counts from dividing by zero without changing real values.
_TINY, _SMALL = 1e-15, 1e-9


def tokenize(text: str) -> str:
    """Lower-case, drop punctuation, single spaces: a Java-free approximation of COCO's PTB tokenizer."""
    words = re.findall(r"[a-z0-9]+(?:'[a-z]+)?", text.lower())
    return " ".join(words)


def _align(candidates, references) -> tuple[list[str], list[list[str]]]:
    """Candidates and references as aligned lists, whether given as dicts (by image id) or sequences."""
    if isinstance(candidates, Mapping):
        if not isinstance(references, Mapping) or set(candidates) != set(references):
            raise ValueError("candidates and references must have the same image ids")
        keys = list(candidates)
        cands = [candidates[k] for k in keys]
        refs = [references[k] for k in keys]
    else:
        cands, refs = list(candidates), list(references)
        if len(cands) != len(refs):
            raise ValueError(f"{len(cands)} candidates but {len(refs)} reference lists")
    out_c, out_r = [], []
    for c, r in zip(cands, refs):
        if isinstance(c, (list, tuple)):   # the COCO format: a one-element list per image
            if len(c) != 1:
                raise ValueError("each image needs exactly one candidate caption")
            c = c[0]
        if isinstance(r, str):
            r = [r]
        if not r:
            raise ValueError("each image needs at least one reference caption")
        out_c.append(c)
        out_r.append(list(r))
    if not out_c:
        raise ValueError("no captions to score")
    return out_c, out_r


def ngram_counts(sentence: str, max_n: int = 4) -> Counter:
    words = sentence.split()
    return Counter(tuple(words[i:i + n]) for n in range(1, max_n + 1) for i in range(len(words) - n + 1))


# ------------------------------------------------------------------------------------------
def bleu(candidates, references, max_n: int = 4) -> tuple[list[float], list[list[float]]]:
    """(corpus BLEU-1..max_n, per-image BLEU-1..max_n as ``scores[n-1][image]``), as pycocoevalcap."""
    cands, refs = _align(candidates, references)
    correct, guess = [0] * max_n, [0] * max_n
    cand_total = ref_total = 0
    per_image: list[list[float]] = [[] for _ in range(max_n)]
    for cand, ref_list in zip(cands, refs):
        c_len = len(cand.split())
        counts = ngram_counts(cand, max_n)
        # Clip by the largest count of each n-gram in any one reference.
        best: Counter = Counter()
        for r in ref_list:
            best |= ngram_counts(r, max_n)
        img_correct = [0] * max_n
        for gram, c in counts.items():
            img_correct[len(gram) - 1] += min(c, best[gram])
        img_guess = [max(0, c_len - n + 1) for n in range(1, max_n + 1)]
        r_len = min((abs(len(r.split()) - c_len), len(r.split())) for r in ref_list)[1]
        for n in range(max_n):
            correct[n] += img_correct[n]
            guess[n] += img_guess[n]
        cand_total += c_len
        ref_total += r_len
        for n, score in enumerate(_bleu_from_counts(img_correct, img_guess, c_len, r_len)):
            per_image[n].append(score)
    return _bleu_from_counts(correct, guess, cand_total, ref_total), per_image


def _bleu_from_counts(correct: Sequence[int], guess: Sequence[int], cand_len: int, ref_len: float) -> list[float]:
    scores, product = [], 1.0
    for n, (c, g) in enumerate(zip(correct, guess), start=1):
        product *= (c + _TINY) / (g + _SMALL)
        scores.append(product ** (1.0 / n))
    ratio = (cand_len + _TINY) / (ref_len + _SMALL)
    if ratio < 1:
        penalty = math.exp(1 - 1 / ratio)
        scores = [s * penalty for s in scores]
    return scores


# ------------------------------------------------------------------------------------------
def cider_d(candidates, references, max_n: int = 4, sigma: float = 6.0) -> tuple[float, list[float]]:
    """(corpus CIDEr-D, per-image CIDEr-D), as pycocoevalcap's ``Cider``; IDF from these references."""
    cands, refs = _align(candidates, references)
    ref_counts = [[ngram_counts(r, max_n) for r in ref_list] for ref_list in refs]
    doc_freq: Counter = Counter()
    for counts in ref_counts:
        doc_freq.update(set().union(*counts))
    log_images = math.log(len(cands))

    def tfidf(counts: Counter) -> tuple[list[dict[NGram, float]], list[float], int]:
        vec: list[dict[NGram, float]] = [{} for _ in range(max_n)]
        for gram, tf in counts.items():
            vec[len(gram) - 1][gram] = tf * (log_images - math.log(max(1.0, doc_freq[gram])))
        norms = [math.sqrt(sum(w * w for w in v.values())) for v in vec]
        # Sentence length as pycocoevalcap measures it: the number of bigrams.
        length = sum(tf for gram, tf in counts.items() if len(gram) == 2)
        return vec, norms, length

    scores = []
    for cand, counts_list in zip(cands, ref_counts):
        c_vec, c_norm, c_len = tfidf(ngram_counts(cand, max_n))
        total = [0.0] * max_n
        for r_counts in counts_list:
            r_vec, r_norm, r_len = tfidf(r_counts)
            penalty = math.exp(-((c_len - r_len) ** 2) / (2 * sigma ** 2))
            for n in range(max_n):
                dot = sum(min(w, r_vec[n].get(g, 0.0)) * r_vec[n].get(g, 0.0) for g, w in c_vec[n].items())
                if c_norm[n] != 0 and r_norm[n] != 0:
                    dot /= c_norm[n] * r_norm[n]
                total[n] += dot * penalty
        scores.append(10.0 * (sum(total) / max_n) / len(counts_list))
    return sum(scores) / len(scores), scores


def caption_metrics(candidates, references, tokenizer=tokenize) -> dict[str, float]:
    """{"BLEU-1".."BLEU-4", "CIDEr-D"}; texts go through ``tokenizer`` first (None: already tokenised)."""
    cands, refs = _align(candidates, references)
    if tokenizer is not None:
        cands = [tokenizer(c) for c in cands]
        refs = [[tokenizer(r) for r in rs] for rs in refs]
    b, _ = bleu(cands, refs)
    c, _ = cider_d(cands, refs)
    return {**{f"BLEU-{n}": b[n - 1] for n in range(1, 5)}, "CIDEr-D": c}
