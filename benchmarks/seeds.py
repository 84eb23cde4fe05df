"""Run any ``mmfm run`` config over several seeds and report every figure as mean +- std.

One seed is one draw: the README's comparisons moved by 10-40 points between machines and learning
rates (issue 14), so a figure the README states comes from >= 3 seeds, and a difference is called a
difference only where the gap between two means exceeds the sum of their standard deviations.

    python benchmarks/seeds.py configs/quickstart.yaml --seeds 0 1 2 --out runs/quickstart_seeds \\
        --json benchmarks/results/quickstart_seeds.json                 # ~4-6 min per seed at 1 thread
    python benchmarks/seeds.py experiments/frozen_shapes/config.yaml --seeds 0 1 2 --out runs/frozen_seeds \\
        --json benchmarks/results/frozen_seeds.json                     # ~8-10 min per seed at 1 thread

Expected on this project's 2-core machine (1 thread; benchmarks/results/*_seeds.json, README): quickstart
zero-shot shape 94.6 +- 1.1%, colour 99.8 +- 0.2%, image->text R@1 44.4 +- 7.9%; Frozen: BLEU-4 0.74 +-
0.07, CIDEr-D 3.72 +- 0.24, VQA 0.94 +- 0.11, binding 0.92 +- 0.10 open-ended / 0.97 +- 0.04 forced choice.

Each seed is a fresh process, literally ``mmfm run CONFIG --out OUT/seed<N> --set ...`` (printed), so a
seed's figures are what that command gives on its own; nothing is shared between seeds in memory. What a
seed changes: the weight initialisation and what the run draws (``seed``), the order and augmentation of
training samples (``models.<i>.train.seed``), for ``shapes`` training data the training images
(``data.<train_data>.args.seed``), and every dataset whose ``args`` name a ``seed`` in the config. So the
quickstart's validation and test sets stay fixed (every seed is scored on the same images), while the Frozen
experiment, whose datasets all name their seed, draws everything per seed: the LM's corpus and
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
def seed_overrides(raw: dict[str, Any], seed: int) -> list[str]:
    """The ``--set`` assignments that give one seed of a config (see the module docstring)."""
    sets = [f"seed={seed}"]
    for i, m in enumerate(raw.get("models", [])):
        if m.get("train") is not None:
            sets.append(f"models.{i}.train.seed={seed}")
    train_key = raw.get("train_data", "train")
    for key, spec in (raw.get("data") or {}).items():
        args = (spec or {}).get("args") or {}
        if "seed" in args or (key == train_key and spec.get("name") == "shapes"):
            sets.append(f"data.{key}.args.seed={seed}")
    return sets


def resolved_config(config: Path, sets: list[str]) -> dict[str, Any]:
    """The validated config a seed runs with, as JSON data (what decides whether a stored seed is reusable)."""
    from mmfm.experiment import load_experiment
    return load_experiment(config, sets).model_dump(mode="json")


def stored_result(seed_dir: Path) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(the result JSON or None, the resolved config the folder's run was started with or None)."""
    path, cfg = seed_dir / "report.json", seed_dir / "config.resolved.yaml"
    return (json.loads(path.read_text()) if path.is_file() else None,
            yaml.safe_load(cfg.read_text()) if cfg.is_file() else None)


class ForeignSeedDir(ValueError):
    """A seed's folder holds a run of another config (rerunning there would mix or overwrite it)."""


#: the figures of the generative evaluations beyond their headline: baselines, per question, binding's others
GENERATIVE_FIGURES = ("metrics", "accuracy", "majority_baseline", "per_question", "per_question_majority_baseline",
                      "open_ended_accuracy", "forced_choice_accuracy", "answered_a_new_word", "chance", "n_episodes",
                      "num_images", "num_questions")


def headline(result: dict[str, Any]) -> dict[str, float]:
    """The figures worth aggregating: each row's headline metrics, training time and loss, and every figure of
    its captioning / vqa / binding evaluations (with the blind-caption baseline), flattened."""
    flat: dict[str, float] = {}
    for row in result["models"]:
        flat.update(flatten(row.get("metrics", {}), f"{row['label']}/"))
        train = row.get("train") or {}
        flat.update(flatten({"train_s": train.get("wall_time_s"), "final_loss": train.get("final_loss")},
                            f"{row['label']}/"))
        for e in row.get("evaluations") or []:
            if e.get("kind") in ("captioning", "vqa", "binding"):
                tag = (e.get("config") or {}).get("tag", e["kind"])
                figures = {k: e[k] for k in GENERATIVE_FIGURES if k in e}
                blind = (e.get("config") or {}).get("blind_baseline")
                if blind:
                    figures["blind_baseline"] = blind
                flat.update(flatten(figures, f"{row['label']}/{tag}/"))
    return flat


# -- running -------------------------------------------------------------------------------------
def run_seed(config: Path, seed: int, out: Path, threads: int) -> tuple[dict[str, Any], bool]:
    """(result JSON, reused?) of one seed: a stored one if it was made from the same config, else a fresh run.
    A run of the same config that stopped early is run again in place: training resumes from its last
    checkpoint, which gives the weights of an uninterrupted run. A folder started with another config is
    refused: the trainer would resume from its checkpoints, and its results would be overwritten."""
    raw = yaml.safe_load(config.read_text())
    sets = seed_overrides(raw, seed)
    seed_dir = out / f"seed{seed}"
    want = resolved_config(config, sets)
    result, made_from = stored_result(seed_dir)
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
    result, made_from = stored_result(seed_dir)
    if result is None or made_from != want:
        raise RuntimeError(f"seed {seed}: {seed_dir} holds no result made from the expected config after the run")
    return result, False


def summarise(config: Path, seeds: list[int], results: dict[int, dict[str, Any]]) -> dict[str, Any]:
    per_seed = {s: headline(r) for s, r in results.items()}
    return {"config": str(config), "seeds": seeds, "statistic": "mean and sample std (n-1) over seeds",
            "seed_overrides": {s: seed_overrides(yaml.safe_load(config.read_text()), s) for s in seeds},
            "aggregate": aggregate(per_seed), "per_seed": per_seed}


def markdown(summary: dict[str, Any]) -> str:
    from mmfm.report import markdown_table
    agg = summary["aggregate"]
    rows = []
    for key, s in agg.items():
        # fractions are shown in % as in report.md (counts, losses and times keep their own scale)
        fraction = 0.0 <= s["min"] and s["max"] <= 1.0 and "loss" not in key and not key.endswith("_s")
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
