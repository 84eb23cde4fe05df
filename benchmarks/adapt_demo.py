"""Adapting a CLIP to a held-out domain: LoRA presets vs full fine-tuning vs linear probe vs a
locked-text hybrid, with WiSE-FT, on the embedded ``shapes`` data (no download).

1. A small CLIP is trained from scratch on shapes *without* some colours (default purple, orange):
   it has never seen those colours, in pixels or in words.
2. It is adapted to the held-out domain (images of only those colours, with their captions) by
   full fine-tuning, by LoRA with each preset, by a linear probe on its frozen features, and by a
   hybrid (a new ResNet-18 image tower + head trained against its frozen text tower).
3. One table: zero-shot colour/shape accuracy and retrieval on the new domain, the old domain's
   colour accuracy (forgetting), trainable share, training time and peak memory. "FT gain" is the
   share of full fine-tuning's colour gain a method recovers. A WiSE-FT sweep follows.

    python benchmarks/adapt_demo.py --out runs/adapt_demo            # quick: < 10 min on 2 CPU cores
    python benchmarks/adapt_demo.py --out runs/adapt_big --base-steps 1500 --adapt-steps 400 --test-size 1000

Writes ``results.json`` and ``results.md`` to ``--out``.
"""
from __future__ import annotations

import argparse
import copy
import json
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
from mmfm.models import CLIPConfig, TextConfig, VisionConfig, create_model
from mmfm.report import markdown_table
from mmfm.tokenizer import get_tokenizer
from mmfm.train import TrainConfig, Trainer

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
    p.add_argument("--seed", type=int, default=0)
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
        (self.out / "results.json").write_text(json.dumps(summary, indent=2, default=str))
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
        (self.out / "results.md").write_text("\n".join(md))
        print("\n" + "\n".join(md))


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    Demo(args).run()


if __name__ == "__main__":
    main()
