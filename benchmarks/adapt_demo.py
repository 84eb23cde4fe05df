"""Adapting a CLIP to a held-out domain: LoRA presets vs full fine-tuning vs linear probe vs a
locked-text hybrid, with WiSE-FT, on the embedded ``shapes`` data (no download), over several seeds.

1. A small CLIP is trained from scratch on shapes *without* some colours (default purple, orange):
   it has never seen those colours, in pixels or in words.
2. It is adapted to the held-out domain (images of only those colours, with their captions) by
   full fine-tuning, by LoRA with each preset, by a linear probe on its frozen features, and by a
   hybrid (a new ResNet-18 image tower + head trained against its frozen text tower).
3. One table: zero-shot colour/shape accuracy and retrieval on the new domain, the old domain's
   colour accuracy (forgetting), trainable share, training time and peak memory. "FT gain" is the
   share of full fine-tuning's colour gain a method recovers. A WiSE-FT sweep follows.

A seed draws everything: the base model's initialisation and training data, the adaptation data, the
test sets, LoRA's initialisation, the order of samples. One seed is one draw (seeds 0-2 move a method
by up to 79 points; the README once ranked the LoRA presets from one seed), so the figures are means +-
sample std over seeds, and a method is called better than another only where the gap between means
exceeds the sum of their stds.

    python benchmarks/adapt_demo.py --seeds 0 1 2 --out runs/adapt_demo --json benchmarks/results/adapt_demo.json

Runtime: 15-30 min per seed with 1 thread on this project's 2-core machine while other jobs shared it
(seed 0: 31 min under heavy load); seeds run one after another. A seed whose OUT/seed<N>/results.json was
made with the same settings is reused (one made with other settings is refused), so seeds can also run as
separate processes (``--seeds 1 --out runs/adapt_demo``) and be aggregated after.
Expected (seeds 0-2, this machine; benchmarks/results/adapt_demo.json, README "Adaptation"): new-colour
zero-shot % base 5.9 +- 6.0, full fine-tuning 73.8 +- 37.3, LoRA qv-r16 66.8 +- 29.0, qkv-r64 70.3 +- 19.2,
attn-mlp-r16 63.3 +- 44.3, fewshot-r2 13.0 +- 19.6, hybrid 22.6 +- 14.0; linear probe (supervised, 2
colours) 100. Seed 0 alone: 5.2 / 30.8 / 33.8 / 58.2 / 12.2 / 0.0 / 9.0. The four strong methods are not
separated by 3 seeds.

Writes OUT/seed<N>/results.json and results.md per seed, OUT/aggregate.json, OUT/aggregate.md and
OUT/adapt_demo.png (mean +- std of new vs old colour accuracy per method).
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from mmfm.adapt import apply_lora, hybrid_from_clip, save_lora, sweep_table, wise_ft_sweep, zero_shot_metric
from mmfm.checkpoints import save_pretrained
from mmfm.data import ImageTextView, get_dataset
from mmfm.data.transforms import image_transform
from mmfm.eval import linear_probe, retrieval, zero_shot
from mmfm.measure import count_parameters
from mmfm.api import create_model
from mmfm.models import CLIPConfig, TextConfig, VisionConfig
from mmfm.report import markdown_table
from mmfm.tokenizer import get_tokenizer
from mmfm.train import TrainConfig, Trainer
from mmfm.util.atomic import atomic_write_json, atomic_write_text
from seeds import ForeignSeedDir, fmt, mean_std, separated   # benchmarks/seeds.py (this script's folder is on sys.path)

PRESETS = ("qv-r16", "qkv-r64", "attn-mlp-r16", "fewshot-r2")
CONTEXT = 24   # shapes' captions are at most ~14 tokens


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="runs/adapt_demo", help="output folder")
    p.add_argument("--held-out", nargs="+", default=["purple", "orange"], help="colours the base model never sees")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--base-steps", type=int, default=500, help="optimizer steps of base training")
    p.add_argument("--adapt-steps", type=int, default=200, help="optimizer steps of every adaptation")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--base-lr", type=float, default=2e-3)
    p.add_argument("--ft-lr", type=float, default=5e-4, help="full fine-tuning learning rate")
    p.add_argument("--lora-lr", type=float, default=3e-3, help="LoRA learning rate")
    p.add_argument("--hybrid-lr", type=float, default=1e-3, help="hybrid image tower learning rate")
    p.add_argument("--target-train-size", type=int, default=2000, help="held-out-domain training images")
    p.add_argument("--test-size", type=int, default=400, help="test images per domain")
    p.add_argument("--probe-size", type=int, default=400, help="training images of the linear probe")
    p.add_argument("--presets", nargs="*", default=list(PRESETS))
    p.add_argument("--skip", nargs="*", default=[], choices=["full", "probe", "hybrid", "wise_ft"])
    p.add_argument("--reuse-base", action="store_true", help="load OUT/base if it exists instead of training it")
    p.add_argument("--threads", type=int, default=1,
                   help="intra-op threads; with 2 cores, 1 thread + 1 data worker is fastest (and robust to other load)")
    p.add_argument("--workers", type=int, default=1, help="data loader worker processes (image rendering)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one full run per seed, then mean +- std")
    p.add_argument("--json", default=None, help="also write the aggregate (with every seed's rows) here")
    return p.parse_args()


def base_config(image_size: int) -> CLIPConfig:
    """A small ViT CLIP that learns shapes in a few CPU minutes (4x4 patches + class token, 4 + 3 layers)."""
    return CLIPConfig(embed_dim=128,
                      vision=VisionConfig(image_size=image_size, patch_size=image_size // 4, width=128, layers=4,
                                          head_width=32),
                      text=TextConfig(context_length=CONTEXT, width=128, heads=4, layers=3))


class Demo:
    def __init__(self, args: argparse.Namespace):
        self.args, self.out = args, Path(args.out)
        size, held, seed = args.image_size, {"color": args.held_out}, args.seed
        # Every dataset gets its own seed: the evaluation feature cache tells datasets apart by their repr,
        # which for shapes does not include the include/exclude filters.
        self.source_train = get_dataset("shapes", split="train", size=50_000, image_size=size, exclude=held, seed=seed)
        self.target_train = get_dataset("shapes", split="train", size=args.target_train_size, image_size=size,
                                        include=held, seed=seed + 1)
        self.source_test = get_dataset("shapes", split="test", size=args.test_size, image_size=size, exclude=held,
                                       seed=seed + 2)
        self.target_test = get_dataset("shapes", split="test", size=args.test_size, image_size=size, include=held,
                                       seed=seed + 3)
        self.tokenizer = get_tokenizer(CONTEXT)
        self.train_tf = image_transform(size, train=True, scale=(0.85, 1.0))

    # -- training ---------------------------------------------------------------------------
    def train(self, model, dataset, label: str, steps: int, lr: float) -> dict[str, Any]:
        a = self.args
        cfg = TrainConfig(max_steps=steps, batch_size=a.batch_size, lr=lr, warmup_steps=min(50, steps // 10),
                          weight_decay=0.1, device="cpu", progress=False, tensorboard=False, resume=False,
                          log_every=max(1, steps // 5), seed=a.seed, num_workers=a.workers)
        view = ImageTextView(dataset, self.train_tf, self.tokenizer, caption_mode="random", seed=a.seed)
        result = Trainer(model, view, cfg, self.out / "runs" / label).fit()
        mem = result.memory
        return {"train_s": result.wall_time_s, "final_loss": result.final_loss,
                "peak_rss_mb": mem["peak_rss_mb"], "rss_growth_mb": mem["peak_rss_mb"] - mem["start_rss_mb"]}

    # -- evaluation -------------------------------------------------------------------------
    def evaluate(self, model) -> dict[str, float]:
        kw = dict(progress=False, batch_size=128)
        model.eval()
        r = retrieval(model, self.target_test, **kw).metrics
        return {"target_color": zero_shot(model, self.target_test, task="color", **kw).metrics.top1,
                "target_shape": zero_shot(model, self.target_test, task="shape", **kw).metrics.top1,
                "target_i2t_R@1": r["i2t_R@1"], "target_t2i_R@1": r["t2i_R@1"],
                "source_color": zero_shot(model, self.source_test, task="color", **kw).metrics.top1}

    def row(self, method: str, model, train: dict | None) -> dict[str, Any]:
        params = count_parameters(model)
        row = {"method": method, "trainable": params.trainable, "total": params.total,
               "trainable_share": params.trainable_share, **(train or {}), **self.evaluate(model)}
        print(f"{method}: " + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                                        if k != "method"), flush=True)
        return row

    # -- the experiment ---------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        a = self.args
        t_start = time.perf_counter()
        torch.manual_seed(a.seed)
        if a.reuse_base and (self.out / "base" / "config.json").is_file():
            base, base_train = create_model(None, pretrained=str(self.out / "base")), {"reused": str(self.out / "base")}
        else:
            base = create_model(base_config(a.image_size))
            base_train = self.train(base, self.source_train, "base", a.base_steps, a.base_lr)
            save_pretrained(base, self.out / "base")
        base.eval()
        base_train["source_shape"] = zero_shot(base, self.source_test, task="shape", progress=False).metrics.top1
        rows = [self.row("base (zero-shot, no adaptation)", base, {"train_s": 0.0})]
        base_state = copy.deepcopy(base.state_dict())

        def fresh_base():
            m = create_model(base_config(a.image_size))
            m.load_state_dict(base_state)
            return m

        finetuned = {}
        if "full" not in a.skip:
            model = fresh_base()
            rows.append(self.row("full fine-tuning", model, self.train(model, self.target_train, "full", a.adapt_steps, a.ft_lr)))
            finetuned["full"] = model
        for preset in a.presets:
            model = apply_lora(fresh_base(), preset)
            train = self.train(model, self.target_train, f"lora-{preset}", a.adapt_steps, a.lora_lr)
            save_lora(model, self.out / "adapters" / preset)
            rows.append(self.row(f"LoRA {preset}", model, train))
            finetuned[preset] = model
        if "probe" not in a.skip:
            rows.append(self.linear_probe_row(base))
        if "hybrid" not in a.skip:
            torch.manual_seed(a.seed)
            model = hybrid_from_clip(base, "resnet18", weights=None, image_size=a.image_size, head_hidden=512)
            train = self.train(model, self.target_train, "hybrid", a.adapt_steps, a.hybrid_lr)
            rows.append(self.row("hybrid: new ResNet-18 + head, locked text", model, train))

        full_gain = None
        full = next((r for r in rows if r["method"] == "full fine-tuning"), None)
        if full is not None:
            full_gain = full["target_color"] - rows[0]["target_color"]
            for r in rows[1:]:
                r["ft_gain_recovered"] = (r["target_color"] - rows[0]["target_color"]) / full_gain if full_gain else None

        sweeps = {}
        if "wise_ft" not in a.skip:
            evals = {"target_color": zero_shot_metric(self.target_test, "color", batch_size=128),
                     "source_color": zero_shot_metric(self.source_test, "color", batch_size=128)}
            for name in [n for n in ("full", "qkv-r64") if n in finetuned]:
                sweeps[name] = wise_ft_sweep(base, finetuned[name], evals, alphas=(0.0, 0.25, 0.5, 0.75, 1.0))
        summary = {"args": vars(a), "base_training": base_train, "rows": rows, "wise_ft": sweeps,
                   "total_s": time.perf_counter() - t_start, "threads": torch.get_num_threads()}
        self.write(summary)
        return summary

    def linear_probe_row(self, base) -> dict[str, Any]:
        """Supervised probes (colour, shape) on the base model's frozen features; no retrieval."""
        a = self.args
        probe_train = get_dataset("shapes", split="train", size=a.probe_size, image_size=a.image_size,
                                  include={"color": a.held_out}, seed=a.seed + 4)
        t0 = time.perf_counter()
        kw = dict(progress=False, c_values=[0.1, 1.0, 10.0], coarse_to_fine=False)
        color = linear_probe(base, probe_train, self.target_test, task="color", **kw)
        shape = linear_probe(base, probe_train, self.target_test, task="shape", **kw)
        probe_params = (base.config.vision.width + 1) * (len(a.held_out) + 6)   # two probes' weights and biases
        return {"method": "linear probe (frozen base features)", "trainable": probe_params,
                "total": count_parameters(base).total + probe_params,
                "trainable_share": probe_params / (count_parameters(base).total + probe_params),
                "train_s": time.perf_counter() - t0, "target_color": color.metrics.top1,
                "target_shape": shape.metrics.top1, "target_i2t_R@1": None, "target_t2i_R@1": None,
                "source_color": None, "note": f"supervised over the {len(a.held_out)} held-out colours"}

    def write(self, summary: dict[str, Any]) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.out / "results.json", summary, default=str)
        pct = lambda v: "-" if v is None else f"{100 * v:.1f}"   # noqa: E731
        headers = ["method", "trainable", "share %", "train s", "peak RSS MB (growth)", "new colour zs %",
                   "new shape zs %", "i2t R@1 %", "t2i R@1 %", "old colour zs %", "FT gain %"]
        table = [[r["method"], f"{r['trainable']:,}", f"{100 * r['trainable_share']:.2f}", f"{r.get('train_s', 0):.0f}",
                  f"{r['peak_rss_mb']:.0f} ({r['rss_growth_mb']:+.0f})" if "peak_rss_mb" in r else "-",
                  pct(r["target_color"]), pct(r["target_shape"]), pct(r["target_i2t_R@1"]), pct(r["target_t2i_R@1"]),
                  pct(r["source_color"]), pct(r.get("ft_gain_recovered"))] for r in summary["rows"]]
        a = summary["args"]
        md = [f"# Adapting to held-out colours {a['held_out']} (shapes, {a['image_size']}px)", "",
              f"Base: trained {a['base_steps']} steps on shapes without {a['held_out']}; every adaptation: "
              f"{a['adapt_steps']} steps x {a['batch_size']} on {a['target_train_size']} held-out-colour images. "
              f"Zero-shot colour over all 8 colours; test sets of {a['test_size']} images per domain. "
              f"Base on its own domain: colour {pct(summary['rows'][0].get('source_color'))}%, shape "
              f"{pct(summary['base_training'].get('source_shape'))}% zero-shot. "
              f"Total {summary['total_s'] / 60:.1f} min ({summary['threads']} compute thread(s) + {a['workers']} data "
              f"worker(s)).", "",
              markdown_table(headers, table), "",
              "Linear-probe rows are supervised classifiers over the colours present in the new domain (an easier "
              "problem than zero-shot over 8 colours). 'FT gain' = share of full fine-tuning's new-colour gain.", ""]
        for name, rows in summary["wise_ft"].items():
            md += [f"## WiSE-FT: base <-> {name}", "", sweep_table(rows), ""]
        atomic_write_text(self.out / "results.md", "\n".join(md))
        print("\n" + "\n".join(md))


# -- seeds ------------------------------------------------------------------------------------
# Settings that do not change a seed's figures: where it is written, and how images reach the trainer
# (every sample is drawn from its own seed, so data loader workers give the same batches).
NOT_DETERMINING = {"out", "reuse_base", "workers", "seeds", "json"}


def seed_args(args: argparse.Namespace, seed: int) -> argparse.Namespace:
    """One seed's settings: everything of ``args`` but the seed list; output in OUT/seed<N>."""
    d = {k: v for k, v in vars(args).items() if k not in ("seeds", "json")}
    return argparse.Namespace(**{**d, "seed": seed, "out": str(Path(args.out) / f"seed{seed}")})


def stored_seed(args: argparse.Namespace) -> dict[str, Any] | None:
    """A seed's earlier summary if it was made with the same determining settings, None if there is none;
    a summary made with other settings is refused (rerunning would overwrite it)."""
    path = Path(args.out) / "results.json"
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    want = {k: v for k, v in vars(args).items() if k not in NOT_DETERMINING}
    differ = sorted(k for k, v in want.items() if summary["args"].get(k) != v)
    if differ:
        raise ForeignSeedDir(f"{path} was made with other settings ({', '.join(differ)}); delete {args.out} "
                             f"or give another --out")
    return summary


METRICS = ("trainable_share", "train_s", "target_color", "target_shape", "target_i2t_R@1", "target_t2i_R@1",
           "source_color", "ft_gain_recovered")


def aggregate(summaries: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Mean +- std over seeds of every method's figures and of every WiSE-FT point."""
    seeds = sorted(summaries)
    methods = [r["method"] for r in summaries[seeds[0]]["rows"]]
    rows = []
    for method in methods:
        per_seed = [next(r for r in summaries[s]["rows"] if r["method"] == method) for s in seeds]
        row = {"method": method}
        for key in METRICS:
            values = [r.get(key) for r in per_seed]
            row[key] = mean_std(values) if all(isinstance(v, (int, float)) for v in values) else None
        rows.append(row)
    wise = {}
    for name in summaries[seeds[0]]["wise_ft"]:
        points = []
        for i, point in enumerate(summaries[seeds[0]]["wise_ft"][name]):
            p = {"alpha": point["alpha"]}
            for key in ("target_color", "source_color"):
                p[key] = mean_std(summaries[s]["wise_ft"][name][i][key] for s in seeds)
            points.append(p)
        wise[name] = points
    base_shape = mean_std(summaries[s]["base_training"]["source_shape"] for s in seeds)
    settings = {k: v for k, v in summaries[seeds[0]]["args"].items() if k not in NOT_DETERMINING | {"seed"}}
    per_seed = {s: {k: summaries[s][k] for k in ("rows", "wise_ft", "base_training", "total_s")} for s in seeds}
    return {"seeds": seeds, "statistic": "mean and sample std (n-1) over seeds", "rows": rows, "wise_ft": wise,
            "base_source_shape": base_shape, "settings": settings, "per_seed": per_seed}


def ranking_notes(agg: dict[str, Any]) -> list[str]:
    """Which LoRA presets are separated on new-colour accuracy (gap between means > sum of stds)."""
    lora = [r for r in agg["rows"] if r["method"].startswith("LoRA") and r["target_color"]]
    notes = []
    for i, a in enumerate(lora):
        for b in lora[i + 1:]:
            hi, lo = (a, b) if a["target_color"]["mean"] >= b["target_color"]["mean"] else (b, a)
            verdict = "separated" if separated(hi["target_color"], lo["target_color"]) else "NOT separated"
            notes.append(f"{hi['method']} vs {lo['method']}: {fmt(hi['target_color'], 100)} vs "
                         f"{fmt(lo['target_color'], 100)} new-colour %: {verdict}")
    return notes


def write_aggregate(agg: dict[str, Any], out: Path, json_path: str | None) -> str:
    seeds = agg["seeds"]
    headers = ["method", "share %", "train s", "new colour zs %", "new shape zs %", "i2t R@1 %", "old colour zs %",
               "FT gain %"]
    table = [[r["method"], fmt(r["trainable_share"], 100, 2).split(" +-")[0], fmt(r["train_s"], 1, 0),
              fmt(r["target_color"], 100), fmt(r["target_shape"], 100), fmt(r["target_i2t_R@1"], 100),
              fmt(r["source_color"], 100), fmt(r["ft_gain_recovered"], 100, 0)] for r in agg["rows"]]
    st = agg["settings"]
    md = [f"# Adapting to held-out colours {st['held_out']}: {len(seeds)} seeds {seeds}", "",
          f"Mean +- sample std over seeds. Base: {st['base_steps']} steps; adaptations: {st['adapt_steps']} steps "
          f"x {st['batch_size']}; {st['test_size']} test images per domain; {st['threads']} thread(s). Base on its "
          f"own domain, shape zero-shot: {fmt(agg['base_source_shape'], 100)}%.", "",
          markdown_table(headers, table), "", "LoRA presets on new-colour accuracy (gap > sum of stds?):", ""]
    md += [f"- {n}" for n in ranking_notes(agg)] + [""]
    for name, points in agg["wise_ft"].items():
        md += [f"## WiSE-FT: base <-> {name}", "",
               markdown_table(["alpha", "new colour %", "old colour %"],
                              [[p["alpha"], fmt(p["target_color"], 100), fmt(p["source_color"], 100)] for p in points]),
               ""]
    text = "\n".join(md)
    atomic_write_json(out / "aggregate.json", agg)
    atomic_write_text(out / "aggregate.md", text)
    if json_path:
        atomic_write_json(json_path, agg)
    plot_aggregate(agg, out / "adapt_demo.png")
    return text


def plot_aggregate(agg: dict[str, Any], path: Path) -> None:
    """New-colour vs old-colour zero-shot accuracy per method, mean +- std over seeds."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [r for r in agg["rows"] if r["target_color"] and r["source_color"]]
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for r in rows:
        t, s = r["target_color"], r["source_color"]
        ax.errorbar(100 * s["mean"], 100 * t["mean"], xerr=100 * s["std"], yerr=100 * t["std"], fmt="o", capsize=3,
                    label=r["method"])
    for name, points in agg["wise_ft"].items():
        ax.plot([100 * p["source_color"]["mean"] for p in points], [100 * p["target_color"]["mean"] for p in points],
                ":", color="grey", lw=1, label=f"WiSE-FT base <-> {name}")
    ax.set_xlabel("old colours, zero-shot %")
    ax.set_ylabel("new colours, zero-shot %")
    ax.set_title(f"Adapting to held-out colours: mean +- std over {len(agg['seeds'])} seeds", fontsize=9)
    ax.legend(fontsize=6, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    summaries = {}
    for seed in args.seeds:
        one = seed_args(args, seed)
        try:
            summaries[seed] = stored_seed(one)
        except ForeignSeedDir as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        if summaries[seed] is not None:
            print(f"seed {seed}: reusing {one.out}/results.json (same settings)", flush=True)
            continue
        print(f"seed {seed}: running into {one.out}", flush=True)
        summaries[seed] = Demo(one).run()
    print("\n" + write_aggregate(aggregate(summaries), Path(args.out), args.json))


if __name__ == "__main__":
    main()
