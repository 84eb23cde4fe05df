"""Training end to end: mmfm's `mmfm run` against open_clip's own training script, same data, same model.

Issue 18 part 4. 32 x STEPS captioned JPEGs (rendered scenes of shapes over textured backgrounds, 224 px,
made once under --data), ViT-B-32 from random init, fp32, 2 DataLoader workers, one epoch of STEPS
optimizer steps of 32 samples, in four separate subprocesses:

    open_clip  batch 32                 python -m open_clip_train.main ... --batch-size 32
    open_clip  batch 8 x accum 4        ... --batch-size 8 --accum-freq 4
    mmfm       batch 32                 mmfm run <config> (train.batch_size 32)
    mmfm       batch 8 x accum 4        ... (train.batch_size 8, train.accum_steps 4)

Measured from outside by a psutil sampler (every 50 ms): peak RSS of the main process, and peak of the
whole process tree (main + DataLoader workers) as the sum of RSS (counts pages the forked workers share
with the main process twice: an upper bound) and the sum of PSS (shared pages split between sharers).
samples/s: steady state, steps 2..STEPS (the first step pays for worker start-up and lazy
initialisation), from each tool's own per-step log (open_clip: `Batch (t)` of every step with
--log-every-n-steps 1; mmfm: metrics.jsonl with log_every 1).

    python benchmarks/train_e2e.py --json benchmarks/results/train_e2e.json            # ~12-15 min, 2 cores
    python benchmarks/train_e2e.py --steps 6 --only mmfm-accum4                        # quick look

Settings that are the same: AdamW lr 5e-4, betas (0.9, 0.98), eps 1e-6, weight decay 0.2, linear warmup
over --warmup steps then cosine to 0 over the epoch, no gradient clipping, random resized crop scale
(0.9, 1.0), torch's default CPU threads. What differs (kept as each library does it): open_clip decays the
positional and token embeddings (ndim >= 2), mmfm exempts embeddings; open_clip clamps the logit scale
after each step, mmfm clamps its exp() at 100 where it is used; mmfm writes a checkpoint at the end, and
its optimizer is the fused AdamW kernel (open_clip: foreach); initialisations differ in detail (each library's
own, different seeds), so the loss curves are not compared here.

Measured 2026-11-30 on an idle 2-core machine, 20 steps (640 JPEGs), benchmarks/results/train_e2e.json: the
four settings in one run, then each pair of settings twice more ("b32_runs", "accum4_runs": 3 runs, paired):

    setting        open_clip samples/s, main GiB   mmfm samples/s, main GiB      mmfm / open_clip
    batch 32       2.22 +- 0.05, 5.19 +- 0.03      2.92 +- 0.14, 3.54 +- 0.00    1.32x +- 0.05 speed,
                                                                                 0.68x +- 0.00 memory (3 runs)
    8 x accum 4    1.44 +- 0.02, 3.98 +- 0.03      1.91 +- 0.01, 3.07 +- 0.00    1.33x +- 0.03 speed,
                                                                                 0.77x +- 0.01 memory (3 runs)

The accumulation line with whole micro-batches (grad_chunk null, the default). The gradient pass re-runs and
back-propagates every piece's image half, then every piece's text half, each against the cached features
(it used to hold both towers' graphs at once, then interleaved the towers piece by piece); it keeps each GELU
output as the recipe gelu(input) (same bits recomputed in backward) and the token table's gradient sparse
until the pass ends; and the Trainer has glibc return freed blocks >= 1 MiB to the OS (the default heap kept
freed activations resident as fragments). Main-process peak: 3.43 GiB (0.88x) before all of these, 3.22
(0.82x) with the tower split, GELU recipe and heap setting, 3.07 (0.77x) with the image-first order and the
sparse table gradient.

Where the accum-4 peak goes (in-process, ViT-B-32 8 x accum 4, RSS sampled every 0.5 ms): 2.46 GiB between
steps without gradients (shared libraries 0.33 + Python/torch heap ~0.28 + weights and AdamW moments 1.69 +
~0.15 other); the image halves add the image tower's gradients (0.33) and one micro-batch's image activations
(0.16: fc1 outputs 52 MiB, q/k/v 41, LayerNorm outputs 27, residual stream 26, attention 13) = 2.94; the text
halves add the text tower's gradients without the token table's and its few activations = 2.94; the peak,
3.02, is the dense gradients of the end of the pass, which the optimizer step needs anyway (weights,
gradients and moments: the 151M fp32 parameters x 4). Before the image-first order the image activations sat
on all gradients (3.18), and each text backward built a dense 101 MB token-table gradient before adding it.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import random
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from mmfm.util.atomic import atomic_write_json, atomic_write_text  # noqa: E402

SETTINGS = {   # name: (library, micro-batch, accumulation steps)
    "open_clip-b32": ("open_clip", 32, 1),
    "open_clip-accum4": ("open_clip", 8, 4),
    "mmfm-b32": ("mmfm", 32, 1),
    "mmfm-accum4": ("mmfm", 8, 4),
}
COLORS = {"red": (200, 40, 40), "green": (40, 160, 60), "blue": (40, 70, 200), "yellow": (230, 200, 40),
          "purple": (130, 50, 160), "orange": (240, 130, 30), "white": (240, 240, 240), "black": (20, 20, 20)}
SHAPES = ("circle", "square", "triangle", "ellipse", "star")
BACKGROUNDS = ("grass", "sand", "sky", "stone")


# -- data -------------------------------------------------------------------------------------
def _background(kind: str, rng: random.Random, size: int):
    """A smooth textured background (low-frequency noise over a base colour), so JPEG sizes and decode
    cost are like a photo's rather than a flat render's."""
    import numpy as np
    from PIL import Image
    base = {"grass": (70, 130, 50), "sand": (200, 180, 130), "sky": (120, 170, 230), "stone": (130, 130, 125)}[kind]
    g = np.random.default_rng(rng.randrange(2 ** 31))
    coarse = g.normal(0, 28, (size // 16, size // 16, 3)).astype("float32")
    noise = np.asarray(Image.fromarray(coarse.clip(-127, 127).astype("int8").view("uint8")).resize(
        (size, size), Image.BICUBIC)).view("int8").astype("float32")
    fine = g.normal(0, 10, (size, size, 3))
    return Image.fromarray((np.array(base, "float32") + noise + fine).clip(0, 255).astype("uint8"))


def _draw_shape(draw, shape: str, box, color) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=color)
    elif shape == "square":
        draw.rectangle(box, fill=color)
    elif shape == "ellipse":
        draw.ellipse((x0, y0 + (y1 - y0) // 4, x1, y1 - (y1 - y0) // 4), fill=color)
    elif shape == "triangle":
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=color)
    else:
        cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
        pts = [(cx + (r if i % 2 == 0 else r / 2.5) * math.cos(math.pi * i / 5 - math.pi / 2),
                cy + (r if i % 2 == 0 else r / 2.5) * math.sin(math.pi * i / 5 - math.pi / 2)) for i in range(10)]
        draw.polygon(pts, fill=color)


def make_data(folder: Path, n: int, size: int = 224) -> Path:
    """``folder/train.csv`` (filepath,title) over ``n`` JPEGs; made once, reused when complete."""
    from PIL import ImageDraw
    csv_path = folder / "train.csv"
    if csv_path.exists() and sum(1 for _ in csv_path.open()) == n + 1:
        return csv_path
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    rows = []
    for i in range(n):
        bg = rng.choice(BACKGROUNDS)
        img = _background(bg, rng, size)
        draw = ImageDraw.Draw(img)
        k = rng.randint(1, 3)
        words = []
        for _ in range(k):
            shape, color = rng.choice(SHAPES), rng.choice(list(COLORS))
            s = rng.randint(size // 6, size // 2)
            x, y = rng.randint(0, size - s), rng.randint(0, size - s)
            _draw_shape(draw, shape, (x, y, x + s, y + s), COLORS[color])
            words.append(f"a {'large' if s > size // 3 else 'small'} {color} {shape}")
        caption = f"{' and '.join(words)} on {bg}"
        path = folder / "images" / f"{i:05d}.jpg"
        img.save(path, quality=90)
        rows.append((str(path), caption))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["filepath", "title"])
    w.writerows(rows)
    atomic_write_text(csv_path, buf.getvalue())   # written last: its presence means the images are complete
    return csv_path


# -- measuring a subprocess ------------------------------------------------------------------
def _pss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_measured(cmd: list[str], env: dict, log_path: Path, interval: float = 0.05) -> dict:
    """Run ``cmd``, sampling the RSS of its main process and its whole process tree."""
    peak = {"main_rss": 0, "tree_rss": 0, "tree_pss": 0, "max_children": 0}
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        root = psutil.Process(proc.pid)
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                try:
                    kids = root.children(recursive=True)
                    main = root.memory_info().rss
                except psutil.Error:
                    break
                rss, pss = main, _pss(proc.pid)
                for k in kids:
                    try:
                        rss += k.memory_info().rss
                        pss += _pss(k.pid)
                    except psutil.Error:
                        pass
                peak["main_rss"] = max(peak["main_rss"], main)
                peak["tree_rss"] = max(peak["tree_rss"], rss)
                peak["tree_pss"] = max(peak["tree_pss"], pss)
                peak["max_children"] = max(peak["max_children"], len(kids))
                stop.wait(interval)

        t = threading.Thread(target=sample, daemon=True)
        t0 = time.perf_counter()
        t.start()
        rc = proc.wait()
        stop.set()
        t.join()
    peak["wall_s"] = time.perf_counter() - t0
    peak["rc"] = rc
    return peak


# -- the two tools ------------------------------------------------------------------------------
# open_clip_train's data module imports pandas only for ``pd.read_csv(path, sep=sep)[key].tolist()``. Where
# pandas is not installed, this stand-in does that with the csv module (and leaves open_clip's process
# ~50-100 MB lighter than with real pandas: the comparison only gets stricter for mmfm).
PANDAS_SHIM = '''"""Stand-in for the one pandas call open_clip_train.data makes (benchmarks/train_e2e.py)."""
import csv


class _Column(list):
    def tolist(self):
        return list(self)


def read_csv(path, sep=","):
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter=sep))
    return {k: _Column(r[k] for r in rows) for k in (rows[0] if rows else {})}
'''


def open_clip_env(work: Path) -> dict:
    env = dict(os.environ)
    try:
        import pandas  # noqa: F401
    except ImportError:
        shim = work / "shim" / "pandas"
        shim.mkdir(parents=True, exist_ok=True)
        atomic_write_text(shim / "__init__.py", PANDAS_SHIM)
        env["PYTHONPATH"] = str(shim.parent) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def open_clip_cmd(csv_path: Path, out: Path, batch: int, accum: int, warmup: int) -> list[str]:
    return [sys.executable, "-m", "open_clip_train.main", "--train-data", str(csv_path), "--dataset-type", "csv",
            "--csv-img-key", "filepath", "--csv-caption-key", "title", "--csv-separator", ",",
            "--model", "ViT-B-32", "--batch-size", str(batch), "--accum-freq", str(accum), "--workers", "2",
            "--epochs", "1", "--precision", "fp32", "--device", "cpu", "--lr", "5e-4", "--wd", "0.2",
            "--warmup", str(warmup), "--log-every-n-steps", "1", "--save-frequency", "0",
            "--logs", str(out), "--name", "run", "--seed", "0", "--zeroshot-frequency", "0", "--val-frequency", "0"]


def open_clip_steps(out: Path) -> list[float]:
    """Seconds per optimizer step, from `Batch (t): <s>` of every logged step (log every step: avg = val)."""
    text = (out / "run" / "out.log").read_text()
    return [float(m) for m in re.findall(r"Batch \(t\): ([0-9.]+),", text)]


def mmfm_config(csv_path: Path, out: Path, batch: int, accum: int, warmup: int, steps: int) -> Path:
    import yaml
    cfg = {
        "name": "train_e2e",
        "seed": 0,
        "data": {"train": {"name": "custom", "args": {"root": str(csv_path.parent), "split": "train",
                                                      "image_column": "filepath", "caption_column": "title"}}},
        "val_data": None,
        "augment": {"random_resized_crop": [0.9, 1.0]},
        "models": [{"label": "vit-b-32", "model": "ViT-B-32", "precision": "fp32", "train": {
            "max_steps": steps, "batch_size": batch, "accum_steps": accum, "lr": 5e-4, "weight_decay": 0.2,
            "betas": [0.9, 0.98], "eps": 1e-6, "warmup_steps": warmup, "schedule": "cosine", "grad_clip": None,
            "num_workers": 2, "log_every": 1, "progress": False, "tensorboard": False, "resume": False}}],
        "evals": [],
    }
    path = out / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def mmfm_steps(out: Path, samples_per_step: int) -> list[float]:
    rows = [json.loads(x) for x in (out / "run" / "vit-b-32" / "metrics.jsonl").read_text().splitlines() if x]
    return [samples_per_step / r["samples_per_s"] for r in rows if r.get("split") == "train"]


def run_setting(name: str, csv_path: Path, work: Path, steps: int, warmup: int) -> dict:
    lib, batch, accum = SETTINGS[name]
    out = work / name
    if out.exists():
        import shutil
        shutil.rmtree(out)
    out.mkdir(parents=True)
    if lib == "open_clip":
        env = open_clip_env(work)
        cmd = open_clip_cmd(csv_path, out, batch, accum, warmup)
    else:
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
        cfg = mmfm_config(csv_path, out, batch, accum, warmup, steps)
        cmd = [sys.executable, "-m", "mmfm.cli", "run", str(cfg), "--out", str(out / "run")]
    print(f"[{name}] {' '.join(cmd[:6])} ...", flush=True)
    mem = run_measured(cmd, env, out / "stdout.log")
    if mem["rc"] != 0:
        tail = (out / "stdout.log").read_text()[-2000:]
        raise SystemExit(f"[{name}] exited with {mem['rc']}:\n{tail}")
    per_step = open_clip_steps(out) if lib == "open_clip" else mmfm_steps(out, batch * accum)
    steady = per_step[1:]
    sps = batch * accum * len(steady) / sum(steady) if steady else float("nan")
    gib = 2 ** 30
    return {"library": lib, "batch_size": batch, "accum_steps": accum, "steps": len(per_step),
            "samples_per_s": sps, "step_s": per_step,
            "peak_rss_main_gib": mem["main_rss"] / gib, "peak_rss_tree_gib": mem["tree_rss"] / gib,
            "peak_pss_tree_gib": mem["tree_pss"] / gib, "max_children": mem["max_children"],
            "wall_s": mem["wall_s"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=20, help="optimizer steps of 32 samples (one epoch over 32 x steps JPEGs)")
    ap.add_argument("--warmup", type=int, default=5, help="linear warmup steps (both libraries)")
    ap.add_argument("--data", default="/tmp/mmfm_train_e2e", help="folder for the JPEGs (made once) and the runs")
    ap.add_argument("--only", nargs="*", choices=list(SETTINGS), default=None, help="run only these settings")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()
    work = Path(args.data)
    csv_path = make_data(work / f"data_{32 * args.steps}", 32 * args.steps)
    names = args.only or list(SETTINGS)
    results = {}
    if args.json and args.only and Path(args.json).exists():
        # --only updates those settings in an existing file (same steps), keeping the others' figures
        old = json.loads(Path(args.json).read_text())
        if old.get("steps") == args.steps and old.get("warmup") == args.warmup:
            results = old.get("results", {})
    for name in names:
        results[name] = run_setting(name, csv_path, work, args.steps, args.warmup)
        write_json(args, results)
        r = results[name]
        print(f"[{name}] {r['samples_per_s']:.3g} samples/s, peak RSS main {r['peak_rss_main_gib']:.2f} GiB, "
              f"tree {r['peak_rss_tree_gib']:.2f} GiB (PSS {r['peak_pss_tree_gib']:.2f})", flush=True)

    table(results)
    write_json(args, results)


def ratios(results: dict) -> dict:
    """mmfm over open_clip, per setting where both ran."""
    out = {}
    for name, r in results.items():
        ref = results.get(name.replace("mmfm", "open_clip"))
        if r["library"] == "mmfm" and ref:
            out[name] = {"speed": r["samples_per_s"] / ref["samples_per_s"],
                         **{k: r[f"peak_{k}_gib"] / ref[f"peak_{k}_gib"] for k in ("rss_main", "rss_tree", "pss_tree")}}
    return out


def table(results: dict) -> None:
    names = [n for n in SETTINGS if n in results]
    q = ratios(results)
    print(f"\n| setting | samples/s | peak RSS main (GiB) | tree RSS (GiB) | tree PSS (GiB) | vs open_clip (speed / main / tree PSS) |")
    print("|---|---|---|---|---|---|")
    for name in names:
        r = results[name]
        vs = (f"{q[name]['speed']:.2f}x / {q[name]['rss_main']:.2f}x / {q[name]['pss_tree']:.2f}x"
              if name in q else "")
        print(f"| {name} | {r['samples_per_s']:.3g} | {r['peak_rss_main_gib']:.2f} | {r['peak_rss_tree_gib']:.2f} "
              f"| {r['peak_pss_tree_gib']:.2f} | {vs} |")


def write_json(args, results: dict) -> None:
    if args.json:
        import torch
        import open_clip
        payload = {"steps": args.steps, "warmup": args.warmup, "model": "ViT-B-32", "precision": "fp32",
                   "workers": 2, "images": 32 * args.steps, "torch": torch.__version__,
                   "open_clip": open_clip.__version__, "cpu_count": os.cpu_count(),
                   "threads": torch.get_num_threads(), "results": results, "mmfm_vs_open_clip": ratios(results)}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.json, payload, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
