"""Run any ``mmfm run`` config over several seeds and report every figure as mean +- std.

One seed is one draw: the README's comparisons moved by 10-40 points between machines and learning
rates (issue 14), so a figure the README states comes from >= 3 seeds, and a difference is called a
difference only where the gap between two means exceeds the sum of their standard deviations.

    python benchmarks/seeds.py configs/quickstart.yaml --seeds 0 1 2 --out runs/quickstart_seeds \\
        --json benchmarks/results/quickstart_seeds.json                 # ~4-6 min per seed at 1 thread
    python benchmarks/seeds.py configs/frozen_shapes.yaml --seeds 0 1 2 --out runs/frozen_seeds \\
        --json benchmarks/results/frozen_seeds.json                     # ~8-10 min per seed at 1 thread

Expected on this project's 2-core machine (1 thread; benchmarks/results/*_seeds.json, README): quickstart
zero-shot shape 94.6 +- 1.1%, colour 99.8 +- 0.2%, image->text R@1 44.4 +- 7.9%; Frozen: BLEU-4 0.74 +-
0.07, CIDEr-D 3.72 +- 0.24, VQA 0.94 +- 0.11, binding 0.92 +- 0.10 open-ended / 0.97 +- 0.04 forced choice.

Each seed is a fresh process, literally ``mmfm run CONFIG --out OUT/seed<N> --set ...`` (printed), so a
seed's figures are what that command gives on its own; nothing is shared between seeds in memory. What a
seed changes:

- an experiment config (quickstart, digits, ...): the weight initialisation (``seed``), the order and
  augmentation of training samples (``models.<i>.train.seed``) and, for datasets that take a seed
  (``shapes``), the training images (``data.<train_data>.args.seed``). Validation and test sets stay
  fixed, so every seed is scored on the same images.
- the Frozen demo (``frozen_demo:``): ``seed``, which draws everything: the LM's corpus and
  initialisation, training and test images, binding episodes.

A seed whose folder already holds a result made from the same resolved config is reused, not rerun
(delete the folder to rerun it); a folder started with another config is refused (exit 2). Writes OUT/aggregate.json and OUT/aggregate.md (and --json PATH).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml


# -- statistics ----------------------------------------------------------------------------------
def mean_std(values: Iterable[float]) -> dict[str, Any]:
    """Mean, sample standard deviation (n-1; 0 for one value), n, min and max of a list of numbers."""
    v = [float(x) for x in values]
    if not v:
        raise ValueError("mean_std: no values")
    m = sum(v) / len(v)
    std = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
    return {"mean": m, "std": std, "n": len(v), "min": min(v), "max": max(v), "values": v}


def separated(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """True where two mean_std summaries differ by more than their spread: |mean_a - mean_b| > std_a + std_b.
    The README states a conclusion only then (with n=3 this is a rule of thumb, not a significance test)."""
    return abs(a["mean"] - b["mean"]) > a["std"] + b["std"]


def fmt(s: dict[str, Any] | None, scale: float = 1.0, digits: int = 1) -> str:
    """'mean +- std' of a mean_std summary, e.g. fmt(s, 100) for fractions shown in %."""
    if s is None:
        return "-"
    return f"{scale * s['mean']:.{digits}f} +- {scale * s['std']:.{digits}f}"


def flatten(tree: Any, prefix: str = "") -> dict[str, float]:
    """Every numeric leaf of a JSON tree as {'a/b/c': value} (bools and lists are left out)."""
    out: dict[str, float] = {}
    if isinstance(tree, dict):
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}{k}/"))
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool) and math.isfinite(tree):
        out[prefix.rstrip("/")] = float(tree)
    return out


def aggregate(per_seed: dict[int, dict[str, float]]) -> dict[str, dict[str, Any]]:
    """mean_std of every key present in all seeds' flattened results."""
    keys = set.intersection(*(set(d) for d in per_seed.values())) if per_seed else set()
    return {k: mean_std(per_seed[s][k] for s in sorted(per_seed)) for k in sorted(keys)}


# -- what a seed changes -------------------------------------------------------------------------
def is_frozen_demo(raw: dict[str, Any]) -> bool:
    return isinstance(raw, dict) and "frozen_demo" in raw


def seed_overrides(raw: dict[str, Any], seed: int) -> list[str]:
    """The ``--set`` assignments that give one seed of a config (see the module docstring)."""
    if is_frozen_demo(raw):
        return [f"seed={seed}"]
    sets = [f"seed={seed}"]
    for i, m in enumerate(raw.get("models", [])):
        if m.get("train") is not None:
            sets.append(f"models.{i}.train.seed={seed}")
    train_key = raw.get("train_data", "train")
    spec = raw.get("data", {}).get(train_key)
    if spec is not None and spec.get("name") == "shapes":
        sets.append(f"data.{train_key}.args.seed={seed}")
    return sets


def resolved_config(config: Path, sets: list[str]) -> dict[str, Any]:
    """The validated config a seed runs with, as JSON data (what decides whether a stored seed is reusable)."""
    raw = yaml.safe_load(config.read_text())
    if is_frozen_demo(raw):
        from mmfm.frozen.demo import load_demo_config
        return load_demo_config(config, sets).model_dump(mode="json")
    from mmfm.experiment import load_experiment
    return load_experiment(config, sets).model_dump(mode="json")


def stored_result(seed_dir: Path, frozen: bool) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(the result JSON or None, the resolved config the folder's run was started with or None)."""
    if frozen:
        path = seed_dir / "results.json"
        result = json.loads(path.read_text()) if path.is_file() else None
        return result, (result or {}).get("config")
    path, cfg = seed_dir / "report.json", seed_dir / "config.resolved.yaml"
    return (json.loads(path.read_text()) if path.is_file() else None,
            yaml.safe_load(cfg.read_text()) if cfg.is_file() else None)


class ForeignSeedDir(ValueError):
    """A seed's folder holds a run of another config (rerunning there would mix or overwrite it)."""


def headline(result: dict[str, Any], frozen: bool) -> dict[str, float]:
    """The figures worth aggregating: accuracies and measurements, flattened."""
    if frozen:
        keep = ("captioning", "captioning_blind_baseline", "vqa", "binding", "text_only_lm")
        flat = flatten({k: result[k] for k in keep if k in result})
        m = result.get("measurements", {})
        flat.update(flatten({"time_s": {"text_lm": m.get("text_lm", {}).get("train_time_s"),
                                        "frozen_train": m.get("frozen_train", {}).get("train_time_s"),
                                        "total": m.get("total_time_s")}}))
        return flat
    flat: dict[str, float] = {}
    for row in result["models"]:
        flat.update(flatten(row.get("metrics", {}), f"{row['label']}/"))
        train = row.get("train") or {}
        flat.update(flatten({"train_s": train.get("wall_time_s"), "final_loss": train.get("final_loss")},
                            f"{row['label']}/"))
    return flat


# -- running -------------------------------------------------------------------------------------
def run_seed(config: Path, seed: int, out: Path, threads: int) -> tuple[dict[str, Any], bool]:
    """(result JSON, reused?) of one seed: a stored one if it was made from the same config, else a fresh run.
    A run of the same config that stopped early is run again in place: training resumes from its last
    checkpoint, which gives the weights of an uninterrupted run. A folder started with another config is
    refused: the trainer would resume from its checkpoints, and its results would be overwritten."""
    raw = yaml.safe_load(config.read_text())
    frozen, sets = is_frozen_demo(raw), seed_overrides(raw, seed)
    seed_dir = out / f"seed{seed}"
    want = resolved_config(config, sets)
    result, made_from = stored_result(seed_dir, frozen)
    if made_from is not None and made_from != want:
        raise ForeignSeedDir(f"{seed_dir} holds a run of another config than {config} with seed {seed}; "
                             f"delete that folder or give another --out")
    if result is not None:
        return result, True
    cmd = [sys.executable, "-m", "mmfm.cli", "run", str(config), "--out", str(seed_dir)]
    for s in sets:
        cmd += ["--set", s]
    print("$ " + " ".join(cmd), flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    subprocess.run(cmd, check=True, env=env)
    result, made_from = stored_result(seed_dir, frozen)
    if result is None or made_from != want:
        raise RuntimeError(f"seed {seed}: {seed_dir} holds no result made from the expected config after the run")
    return result, False


def summarise(config: Path, seeds: list[int], results: dict[int, dict[str, Any]]) -> dict[str, Any]:
    frozen = is_frozen_demo(yaml.safe_load(config.read_text()))
    per_seed = {s: headline(r, frozen) for s, r in results.items()}
    return {"config": str(config), "seeds": seeds, "statistic": "mean and sample std (n-1) over seeds",
            "frozen_demo": frozen,
            "seed_overrides": {s: seed_overrides(yaml.safe_load(config.read_text()), s) for s in seeds},
            "aggregate": aggregate(per_seed), "per_seed": per_seed}


def markdown(summary: dict[str, Any]) -> str:
    from mmfm.report import markdown_table
    agg = summary["aggregate"]
    rows = []
    for key, s in agg.items():
        # experiment metrics are fractions, shown in % as in report.md; the Frozen demo's keep their own scale
        fraction = not summary["frozen_demo"] and 0.0 <= s["min"] and s["max"] <= 1.0 and "loss" not in key
        scale = 100.0 if fraction else 1.0
        rows.append([key + (" (%)" if fraction else ""), fmt(s, scale, 2 if not fraction else 1),
                     ", ".join(f"{scale * v:.4g}" for v in s["values"])])
    return "\n".join([f"# {summary['config']} over seeds {summary['seeds']}", "",
                      f"{summary['statistic']}; per-seed values in seed order.", "",
                      markdown_table(["figure", "mean +- std", "per seed"], rows), ""])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config", type=Path)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", type=Path, default=None, help="default: runs/<config name>_seeds")
    p.add_argument("--threads", type=int, default=1, help="compute threads per run (OMP_NUM_THREADS)")
    p.add_argument("--json", type=Path, default=None, help="also write the aggregate here")
    args = p.parse_args(argv)
    if not args.config.is_file():
        print(f"error: config {args.config} does not exist (bundled configs are in configs/)", file=sys.stderr)
        return 2
    if len(set(args.seeds)) < len(args.seeds):
        print(f"error: --seeds {args.seeds} repeats a seed; give distinct seeds", file=sys.stderr)
        return 2
    out = args.out or Path("runs") / f"{args.config.stem}_seeds"
    results = {}
    for seed in args.seeds:
        try:
            results[seed], reused = run_seed(args.config, seed, out, args.threads)
        except ForeignSeedDir as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"seed {seed}: {'reused ' if reused else ''}{out / f'seed{seed}'}", flush=True)
    summary = summarise(args.config, args.seeds, results)
    out.mkdir(parents=True, exist_ok=True)
    from mmfm.util.atomic import atomic_write_json, atomic_write_text
    text = markdown(summary)
    atomic_write_json(out / "aggregate.json", summary)
    atomic_write_text(out / "aggregate.md", text)
    if args.json:
        atomic_write_json(args.json, summary)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
