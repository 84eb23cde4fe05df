"""Throughput of ``mmfm.tokenizer.tokenize`` vs ``open_clip.tokenize``.

Builds a deterministic batch of varied captions (mostly plain English, plus a
share with HTML entities and with non-ASCII text: accents, CJK, emoji,
mojibake), checks that both tokenizers return identical tensors, then times
them interleaved over several repeats and prints captions/s and the ratio.

    PYTHONPATH=src python benchmarks/tokenizer_speed.py --n 10000 --repeats 5 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import torch

SUBJECTS = [
    "a dog", "two cats", "an old man", "a young woman", "a red car", "the Eiffel Tower",
    "a bowl of ramen", "three kids", "a vintage bicycle", "a golden retriever puppy",
    "a snowy mountain", "an astronaut", "a wooden table", "a street market", "a laptop",
]
VERBS = [
    "sitting on", "running across", "standing next to", "looking at", "parked near",
    "lying under", "floating above", "painted on", "reflected in", "hidden behind",
]
PLACES = [
    "the beach", "a busy street", "the kitchen counter", "a green field", "the city at night",
    "a foggy forest", "the living room", "an empty parking lot", "a museum wall", "the river",
]
EXTRAS = [
    "", "", "", " at sunset", " in the rain", ", high resolution", " - stock photo",
    " (2019)", ", 4K wallpaper", " #travel #photography", "!!", "...", " | Getty Images",
    " it's beautiful", ", 35mm film", " on Instagram", " 1920x1080",
]
ENTITY_EXTRAS = [" &amp; friends", " &quot;quoted&quot;", " &lt;b&gt;sale&lt;/b&gt;", " rock &#39;n&#39; roll"]
NON_ASCII_EXTRAS = [
    " in Zürich", " at the café", " naïve art", " 東京の夜景", " 北京天安门", " 서울 거리",
    " 😀🎉", " 👍🏽", " — “quoted”", " Москва", " Ελλάδα", " doesnâ€™t matter", " ½ price",
]
SYLLABLES = [
    "ka", "ro", "mi", "ten", "lo", "var", "su", "pel", "dra", "gon", "qui", "zel", "ox", "ba",
    "tri", "mon", "lux", "fe", "ra", "sto", "ne", "vik", "al", "por", "shu", "ty", "wen", "cor",
]
PUNCT = ["", "", "", "", ",", ".", "!", ":", ";", "?", "'s", "-"]


def _pseudo_vocab(rng: random.Random, size: int) -> list[str]:
    """Made-up words (brands, names, product codes) that BPE splits into pieces."""
    words = []
    for _ in range(size):
        word = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4)))
        r = rng.random()
        if r < 0.1:
            word = f"{word}{rng.randint(1, 9999)}"
        elif r < 0.15:
            word = f"IMG_{rng.randint(0, 99999):05d}"
        elif r < 0.2:
            word = f"#{word}"
        words.append(word)
    return words


def build_captions(n: int, seed: int, entity_frac: float, non_ascii_frac: float) -> list[str]:
    """Deterministic caption mix: template sentences and alt-text-like word lists.

    Alt-text captions draw Zipf-distributed words from a large made-up
    vocabulary, so per-word caches see a realistic long tail of misses.
    """
    vocab_rng = random.Random(1234)  # same vocabulary for every seed
    vocab = _pseudo_vocab(vocab_rng, 20_000)
    common = [w for phrase in SUBJECTS + VERBS + PLACES for w in phrase.split()]
    weights = [1.0 / (rank + 1) for rank in range(len(vocab))]
    rng = random.Random(seed)
    captions = []
    for _ in range(n):
        if rng.random() < 0.6:
            text = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(PLACES)}{rng.choice(EXTRAS)}"
        else:
            k = rng.randint(3, 18)
            picks = rng.choices(vocab, weights=weights, k=k)
            words = [w if rng.random() < 0.6 else rng.choice(common) for w in picks]
            text = " ".join(w + rng.choice(PUNCT) for w in words)
        if rng.random() < 0.3:
            text = text.capitalize()
        if rng.random() < 0.1:
            text = text.title()
        r = rng.random()
        if r < entity_frac:
            text += rng.choice(ENTITY_EXTRAS)
        elif r < entity_frac + non_ascii_frac:
            text += rng.choice(NON_ASCII_EXTRAS)
        if rng.random() < 0.02:  # a few long ones that need truncation
            text = " ".join([text] * 8)
        captions.append(text)
    return captions


def _time(fn: Callable[[Sequence[str]], torch.Tensor], captions: Sequence[str]) -> float:
    start = time.perf_counter()
    fn(captions)
    return time.perf_counter() - start


def _summary(n: int, ts: list[float]) -> dict[str, object]:
    med = statistics.median(ts)
    return {
        "median_s": med,
        "best_s": min(ts),
        "captions_per_s_median": n / med,
        "captions_per_s_best": n / min(ts),
        "times_s": ts,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000, help="captions per batch")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per tokenizer and scenario")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--entity-frac", type=float, default=0.05, help="share of captions with HTML entities")
    parser.add_argument("--non-ascii-frac", type=float, default=0.10, help="share of captions with non-ASCII text")
    parser.add_argument(
        "--tokenizers-parallelism",
        choices=["keep", "true", "false"],
        default="keep",
        help="importing open_clip sets TOKENIZERS_PARALLELISM=false process-wide; 'keep' restores "
        "the value from before that import (what mmfm sees when open_clip is not imported)",
    )
    parser.add_argument("--json", type=str, default=None, help="write results to this JSON file")
    args = parser.parse_args(argv)

    env_before = os.environ.get("TOKENIZERS_PARALLELISM")
    import open_clip  # sets TOKENIZERS_PARALLELISM=false as a side effect

    if args.tokenizers_parallelism == "keep":
        if env_before is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = env_before
    else:
        os.environ["TOKENIZERS_PARALLELISM"] = args.tokenizers_parallelism

    from mmfm.tokenizer import CLIPTokenizer, tokenize

    t0 = time.perf_counter()
    CLIPTokenizer()("warm up: loads the vocabulary and builds the engine")
    load_s = time.perf_counter() - t0

    main_batch = build_captions(args.n, args.seed, args.entity_frac, args.non_ascii_frac)
    # Fresh batches from the same distribution (other seeds) for the
    # "unseen" scenario: caches are warm, but these exact captions are new.
    unseen = [
        build_captions(args.n, args.seed + 1000 + r, args.entity_frac, args.non_ascii_frac)
        for r in range(args.repeats)
    ]

    times: dict[str, dict[str, list[float]]] = {}

    def record(scenario: str, name: str, seconds: float) -> None:
        times.setdefault(scenario, {}).setdefault(name, []).append(seconds)

    # 1) cold: empty per-word / per-chunk caches on both sides.
    for _ in range(args.repeats):
        ref_tok = open_clip.tokenizer.SimpleTokenizer()  # fresh, empty BPE cache
        record("cold", "open_clip", _time(ref_tok, main_batch))
        ours = CLIPTokenizer()
        ours.clear_cache()
        record("cold", "mmfm", _time(ours, main_batch))

    # Correctness on everything that will be timed (also warms both caches).
    for batch in [main_batch, *unseen]:
        if not torch.equal(tokenize(batch), open_clip.tokenize(batch)):
            print("MISMATCH between mmfm and open_clip", file=sys.stderr)
            return 1

    impls: dict[str, Callable[[Sequence[str]], torch.Tensor]] = {
        "open_clip": open_clip.tokenize,
        "mmfm": tokenize,
    }
    # 2) warm caches, new captions each repeat; 3) the same batch again.
    for r in range(args.repeats):
        for name, fn in impls.items():  # interleaved, so drift affects both alike
            record("warm_unseen", name, _time(fn, unseen[r]))
        for name, fn in impls.items():
            record("warm_same", name, _time(fn, main_batch))

    results: dict[str, dict[str, object]] = {}
    print(
        f"{args.n} captions/batch, {args.repeats} repeats, {os.cpu_count()} CPUs, "
        f"TOKENIZERS_PARALLELISM={os.environ.get('TOKENIZERS_PARALLELISM', '<unset>')}; "
        f"mmfm load {load_s * 1e3:.0f} ms; outputs identical"
    )
    print(f"{'scenario':<12} {'tokenizer':<10} {'median s':>9} {'best s':>8} {'captions/s':>11} {'speed-up':>9}")
    for scenario, per_impl in times.items():
        rows = {name: _summary(args.n, ts) for name, ts in per_impl.items()}
        ratio = rows["open_clip"]["median_s"] / rows["mmfm"]["median_s"]  # type: ignore[operator]
        results[scenario] = {**rows, "speedup": ratio}
        for name, row in rows.items():
            speed = f"{ratio:.2f}x" if name == "mmfm" else ""
            print(
                f"{scenario:<12} {name:<10} {row['median_s']:>9.4f} {row['best_s']:>8.4f} "
                f"{row['captions_per_s_median']:>11,.0f} {speed:>9}"
            )

    if args.json:
        payload = {
            "n": args.n,
            "repeats": args.repeats,
            "seed": args.seed,
            "entity_frac": args.entity_frac,
            "non_ascii_frac": args.non_ascii_frac,
            "tokenizers_parallelism": os.environ.get("TOKENIZERS_PARALLELISM"),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "load_s": load_s,
            "identical": True,
            "results": results,
        }
        with open(args.json, "w") as fh:
            json.dump(payload, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
