"""mmfm vs open_clip vs Hugging Face transformers on the same architecture and the same random weights.

Lines: image encode and text encode throughput (items/s) at batch 1 and 64, one training step
(forward + backward + AdamW) at batch 32, and peak training memory. ViT-B-32 (all three libraries) and
RN50 (open_clip only: HF has no ModifiedResNet). fp32 on CPU; bf16 on CUDA when a GPU is present.
Libraries are timed interleaved in one process (round-robin over repeats) so machine noise hits all of
them alike; peak training memory is measured in a fresh subprocess per library.

    python benchmarks/compare.py --json benchmarks/results/compare.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def libraries(arch: str) -> list[str]:
    """Libraries compared on ``arch``: transformers has no ModifiedResNet."""
    return ["mmfm", "open_clip"] + ([] if arch.startswith("RN") else ["hf"])


def build_models(arch: str, tmp: Path, device: str, dtype: torch.dtype) -> dict[str, dict]:
    """Same random weights in each library; each entry has encode_image/encode_text/train-loss callables."""
    import open_clip

    import mmfm
    from mmfm.checkpoints import export_hf, to_openclip_state_dict

    torch.manual_seed(0)
    ours = mmfm.create_model(arch)
    oc = open_clip.create_model(arch)
    oc.load_state_dict(to_openclip_state_dict(ours))
    models = {"mmfm": ours, "open_clip": oc}
    if "hf" in libraries(arch):
        import transformers
        export_hf(ours, tmp / arch)
        models["hf"] = transformers.CLIPModel.from_pretrained(tmp / arch)
    out = {}
    for name, m in models.items():
        m = m.to(device=device, dtype=dtype).eval()
        if name == "hf":
            enc_i = lambda x, m=m: m.get_image_features(pixel_values=x)
            enc_t = lambda t, m=m: m.get_text_features(input_ids=t)
            # transformers' own contrastive loss (CLIPModel(return_loss=True)) and torch's default AdamW.
            loss = lambda x, t, m=m: m(pixel_values=x, input_ids=t, return_loss=True).loss
            optimizer = lambda m=m: torch.optim.AdamW(m.parameters(), lr=1e-5)
        elif name == "open_clip":
            enc_i = lambda x, m=m: m.encode_image(x)
            enc_t = lambda t, m=m: m.encode_text(t)
            # What open_clip's training script does: ClipLoss on the model outputs, torch's default AdamW.
            clip_loss = open_clip.ClipLoss()
            loss = lambda x, t, m=m, f=clip_loss: f(*m(x, t)[:3])
            optimizer = lambda m=m: torch.optim.AdamW(m.parameters(), lr=1e-5)
        else:
            from mmfm.train import TrainConfig, build_optimizer
            from mmfm.train.losses import clip_loss
            enc_i = lambda x, m=m: m.encode_image(x)
            enc_t = lambda t, m=m: m.encode_text(t)
            # What mmfm's Trainer does: the model's output dict into clip_loss, AdamW from build_optimizer.
            def loss(x, t, m=m):
                o = m(x, t)
                return clip_loss(o["image_features"], o["text_features"], o["logit_scale"])
            optimizer = lambda m=m: build_optimizer(m, TrainConfig(lr=1e-5, weight_decay=0.1))
        out[name] = {"model": m, "encode_image": enc_i, "encode_text": enc_t, "loss": loss, "optimizer": optimizer}
    return out


def inputs(batch: int, device: str, dtype: torch.dtype, size: int = 224):
    x = torch.randn(batch, 3, size, size, device=device, dtype=dtype)
    t = torch.randint(1, 49000, (batch, 77), device=device)
    t[:, 20] = 49407
    return x, t


def time_interleaved(fns: dict, repeats: int, device: str, warmup: int = 1) -> dict[str, float]:
    """Median seconds per call for each function, calls interleaved across libraries (round-robin), so
    machine noise hits every library alike. Each call is timed by ``torch.utils.benchmark.Timer``."""
    from torch.utils.benchmark import Timer
    threads = torch.get_num_threads()   # Timer would otherwise run single-threaded
    timers = {k: Timer(stmt="f()", globals={"f": f}, num_threads=threads) for k, f in fns.items()}
    for t in timers.values():
        for _ in range(warmup):
            t.timeit(1)
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, t in timers.items():
            times[k].append(t.timeit(1).median)    # Timer synchronises CUDA around the call
    return {k: statistics.median(v) for k, v in times.items()}


def train_step_fn(entry, x, t):
    """One optimizer step (forward + backward + AdamW), the library's own loss and optimizer."""
    m = entry["model"]
    m.train()
    opt = entry["optimizer"]()

    def step():
        opt.zero_grad(set_to_none=True)
        entry["loss"](x, t).backward()
        opt.step()
    return step


def peak_train_memory(arch: str, lib: str, batch: int, device: str) -> float:
    """Peak memory (MiB) of training steps, in a fresh process: RSS on CPU, allocator peak on CUDA."""
    code = f"""
import sys, torch, tempfile, pathlib
sys.path.insert(0, {str(Path(__file__).parent)!r})
from compare import build_models, inputs, train_step_fn
dtype = torch.bfloat16 if {device!r}.startswith('cuda') else torch.float32
with tempfile.TemporaryDirectory() as d:
    e = build_models({arch!r}, pathlib.Path(d), {device!r}, dtype)[{lib!r}]
    x, t = inputs({batch}, {device!r}, dtype)
    if {device!r}.startswith('cuda'):
        torch.cuda.reset_peak_memory_stats()
    step = train_step_fn(e, x, t)
    for _ in range(2):
        step()
    if {device!r}.startswith('cuda'):
        print(torch.cuda.max_memory_allocated() / 2**20)
    else:   # VmHWM: this process's own peak RSS (ru_maxrss would include the parent's, inherited at fork)
        try:
            hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]
            print(int(hwm.split()[1]) / 1024)
        except OSError:   # not Linux
            import resource
            print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        return float("nan")
    return float(out.stdout.strip().splitlines()[-1])


def memory_row(arch: str, batch: int, device: str) -> dict:
    return {"arch": arch, "line": f"peak train memory b{batch}", "unit": "MiB (lower is better)",
            **{k: peak_train_memory(arch, k, batch, device) for k in libraries(arch)}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", nargs="+", default=["ViT-B-32", "RN50"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--train-batch", type=int, default=32)
    ap.add_argument("--no-memory", action="store_true", help="skip the subprocess peak-memory line")
    ap.add_argument("--memory-only", action="store_true", help="only the peak-memory line")
    ap.add_argument("--train-only", action="store_true", help="only the training-step and memory lines")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for arch in args.archs:
            if args.memory_only:
                rows.append(memory_row(arch, args.train_batch, device))
                continue
            entries = build_models(arch, Path(d), device, dtype)
            with torch.inference_mode():
                for kind in (() if args.train_only else ("encode_image", "encode_text")):
                    for bs in (1, 64):
                        x, t = inputs(bs, device, dtype)
                        arg = x if kind == "encode_image" else t
                        secs = time_interleaved({k: (lambda e=e, a=arg: e[kind](a)) for k, e in entries.items()},
                                                args.repeats, device)
                        rows.append({"arch": arch, "line": f"{kind} b{bs}", "unit": "items/s",
                                     **{k: bs / s for k, s in secs.items()}})
            x, t = inputs(args.train_batch, device, dtype)
            steps = {k: train_step_fn(e, x, t) for k, e in entries.items()}
            secs = time_interleaved(steps, max(args.repeats // 2, 2), device)
            rows.append({"arch": arch, "line": f"train step b{args.train_batch}", "unit": "samples/s",
                         **{k: args.train_batch / s for k, s in secs.items()}})
            if not args.no_memory:
                rows.append(memory_row(arch, args.train_batch, device))
            del entries
    libs = ["mmfm", "open_clip", "hf"]
    print(f"device: {device} ({dtype}), torch {torch.__version__}, threads {torch.get_num_threads()}")
    header = "| arch | line | unit | " + " | ".join(libs) + " | mmfm / best peer |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for r in rows:
        peers = [r[k] for k in ("open_clip", "hf") if k in r]
        if "memory" in r["line"]:
            ratio = r["mmfm"] / min(peers)
        else:
            ratio = r["mmfm"] / max(peers)
        r["ratio_vs_best_peer"] = ratio
        cells = [f"{r[k]:.1f}" if k in r else "-" for k in libs]
        print(f"| {r['arch']} | {r['line']} | {r['unit']} | " + " | ".join(cells) + f" | {ratio:.3f} |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"device": device, "dtype": str(dtype), "torch": torch.__version__,
                                               "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
