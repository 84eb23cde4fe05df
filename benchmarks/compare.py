"""mmfm vs open_clip vs Hugging Face transformers on the same architecture and the same random weights.

Lines: image encode and text encode throughput (items/s) at batch 1 and 64, one training step
(forward + backward + AdamW) at batch 32, and peak training memory. ViT-B-32 (all three libraries) and
RN50 (open_clip only: HF has no ModifiedResNet). fp32 on CPU; bf16 on CUDA when a GPU is present.
Libraries are timed interleaved in one process (round-robin over repeats) so machine noise hits all of
them alike; peak training memory is measured in a fresh subprocess per library.

    python benchmarks/compare.py --json benchmarks/results/compare.json

Deployment lines (issue 18; CPU, also part of the full run unless --no-deploy): ViT-B-32 image encode at batch
1 and 64 for mmfm fp32 / bf16 / int8 (``create_model(precision=...)``) and ONNX Runtime fp32 / int8
(``export_onnx``, then ``quantize_dynamic`` with QInt8 per-channel weights), all from the same saved weights,
the same thread count (ORT intra_op_num_threads = torch threads), timed interleaved, in a process with the
allocator policy of mmfm's inference commands (``--malloc default`` for glibc's own). Each row: images/s,
ms/batch, speed ratio to mmfm fp32 and to ORT fp32, GFLOP/s (FLOPs per image from ``mmfm.info``) and its share
of the measured matmul peak of its precision (best of torch.mm and the packed oneDNN kernel; int8 torch._int_mm), and the min cosine of its
embeddings with mmfm fp32's on the timed inputs, so no speed is reported without its accuracy. Then the
issue's targets with the ratios achieved, and the end-to-end line: ``embed_images`` (what ``mmfm embed`` runs,
its default DataLoader workers) on 2,048 generated JPEGs of 256-500 px vs the model alone on pre-made tensors
at the same batch size, alternated (target: >= 80%). Only the deployment lines, JPEGs kept for the next run:

    python benchmarks/compare.py --deploy --jpeg-cache ~/.cache/mmfm-bench --json benchmarks/results/deploy.json

Runtime: about 5 minutes on a quiet 8-core machine (estimate, not measured: the end-to-end line is 4 passes
over 2,048 images at ~45 images/s, the rest ~1.5 min, the JPEGs ~1 min the first time). On 2 cores shared with
other jobs (load ~12) the lines before the end-to-end one took ~15 min with --repeats 3 and embed ran at
~3-6 images/s, so there use --e2e-images 512 --e2e-repeats 1. Under load trust the ratios (interleaved), not
the absolute rates.
"""
from __future__ import annotations

import argparse
import math
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


def time_interleaved(fns: dict, repeats: int, device: str, warmup: int = 1, pause: float = 0.0,
                     every: bool = False, min_round_s: float = 0.0) -> dict:
    """Median seconds per call for each function, calls interleaved across libraries (round-robin), so
    machine noise hits every library alike. Each call is timed by ``torch.utils.benchmark.Timer``.

    ``pause`` seconds (untimed) before each call let the previous call's thread pool stop spinning: ONNX
    Runtime's workers spin after a run by default, and on the same cores that slows whichever engine runs
    next (on 2 busy cores, torch at batch 1 measured several times slower right after an ORT call).
    ``every``: each function's list of seconds, one per repeat, in round order (round i of every function
    ran back to back, so ratios within a round are paired), instead of the medians.
    ``min_round_s``: each function's turn in a round runs as many calls as fill this many seconds (from its
    last warm-up call), and counts their mean: one 30 ms call at batch 1 is at the mercy of one scheduler tick."""
    from torch.utils.benchmark import Timer
    threads = torch.get_num_threads()   # Timer would otherwise run single-threaded
    timers = {k: Timer(stmt="f()", globals={"f": f}, num_threads=threads) for k, f in fns.items()}
    calls = {}
    for k, t in timers.items():
        last = None
        for _ in range(max(warmup, 1 if min_round_s else 0)):
            last = t.timeit(1).median
        calls[k] = max(1, math.ceil(min_round_s / last)) if min_round_s and last else 1
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, t in timers.items():
            time.sleep(pause)
            times[k].append(t.timeit(calls[k]).mean)    # Timer synchronises CUDA around the calls
    return times if every else {k: statistics.median(v) for k, v in times.items()}


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


# ---- deployment lines: mmfm fp32 / bf16 / int8 and ONNX Runtime fp32 / int8 on the same weights ----------------

def matmul_peak(n: int = 2048, repeats: int = 5) -> dict:
    """Measured matmul rate (GFLOP/s) on n x n matrices per precision, the best of its kernels: torch.mm and
    oneDNN's packed-weight matmul for fp32 and bf16, torch._int_mm for int8 (when this torch has it on CPU),
    timed interleaved; ``best`` is the machine's measured peak to compare against."""
    from mmfm.models import kernels
    g = torch.Generator().manual_seed(0)
    a32 = torch.randn(n, n, generator=g)
    fns = {"fp32": lambda: torch.mm(a32, a32)}
    a16 = a32.bfloat16()
    fns["bf16"] = lambda: torch.mm(a16, a16)
    if kernels._HAVE_PACKED:
        # oneDNN's matmul on a weight packed once into its blocked layout: the kernel mmfm's inference runs
        # (torch.mm's fp32 path here reaches about half its rate, which would put mmfm above "the peak").
        p32, p16 = kernels.pack(a32), kernels.pack(a16)
        fns["fp32 packed"] = lambda: kernels.packed_linear(a32, p32, None)
        fns["bf16 packed"] = lambda: kernels.packed_linear(a16, p16, None)
    a8 = torch.randint(-128, 128, (n, n), dtype=torch.int8, generator=g)
    try:
        torch._int_mm(a8[:32, :32], a8[:32, :32])
        fns["int8"] = lambda: torch._int_mm(a8, a8)
    except (AttributeError, RuntimeError, NotImplementedError):
        pass   # no int8 matmul kernel in this build: the line is left out
    secs = time_interleaved(fns, repeats, "cpu")
    rates = {k: 2 * n ** 3 / s / 1e9 for k, s in secs.items()}
    out = {k: max(v for name, v in rates.items() if name.split()[0] == k) for k in ("fp32", "bf16", "int8")
           if k in rates}   # per precision, its best kernel
    best = max(out, key=out.get)
    return {"n": n, "gflops": out, "best": out[best], "best_kernel": best}


def best_peak(a: dict, b: dict) -> dict:
    """Per kernel, the higher of two peak measurements."""
    gflops = {k: max(a["gflops"][k], b["gflops"].get(k, 0.0)) for k in a["gflops"]}
    best = max(gflops, key=gflops.get)
    return {"n": a["n"], "gflops": gflops, "best": gflops[best], "best_kernel": best}


def ort_session(path: Path, threads: int):
    """An ONNX Runtime CPU session with the same intra-op thread count as torch, all graph optimisations on."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def build_deploy_engines(arch: str, tmp: Path, threads: int) -> tuple[dict, dict, torch.nn.Module]:
    """Image encoders on the same random weights: {name: x -> float32 embeddings}, {name: why unavailable},
    and the fp32 model. bf16 and int8 come through ``create_model(pretrained=..., precision=...)`` from the
    fp32 weights saved once; ONNX Runtime runs ``export_onnx`` of the same model, and its int8 is
    ``quantize_dynamic`` of that file (QInt8 weights per output channel, as mmfm's int8)."""
    import mmfm
    from mmfm.checkpoints import save_pretrained

    torch.manual_seed(0)
    fp32 = mmfm.create_model(arch).eval()
    save_pretrained(fp32, tmp / f"{arch}-weights")
    engines, unavailable = {"mmfm fp32": fp32.encode_image}, {}
    for precision in ("bf16", "int8"):
        try:
            m = mmfm.create_model(arch, pretrained=str(tmp / f"{arch}-weights"), precision=precision).eval()
            engines[f"mmfm {precision}"] = m.encode_image
        except Exception as e:   # e.g. no quantized engine in this torch build
            unavailable[f"mmfm {precision}"] = " ".join(str(e).split()) or type(e).__name__
    try:
        import onnxruntime  # noqa: F401
        onnx_path = mmfm.export_onnx(fp32, tmp / f"{arch}-onnx")["image"]
        engines["ort fp32"] = _ort_encoder(ort_session(onnx_path, threads))
    except Exception as e:   # not installed, or the export failed: said in the output, the mmfm lines still run
        unavailable["ort fp32"] = unavailable["ort int8"] = " ".join(str(e).split()) or type(e).__name__
        return engines, unavailable, fp32
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
        int8_path = onnx_path.with_name("image_encoder.int8.onnx")
        quantize_dynamic(onnx_path, int8_path, weight_type=QuantType.QInt8, per_channel=True)
        engines["ort int8"] = _ort_encoder(ort_session(int8_path, threads))
    except Exception as e:   # e.g. an onnxruntime without its quantization tools
        unavailable["ort int8"] = " ".join(str(e).split()) or type(e).__name__
    return engines, unavailable, fp32


def _ort_encoder(session):
    name = session.get_inputs()[0].name
    return lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0])


def min_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1).min().item()


def paired_ratio(ref: list[float], other: list[float]) -> tuple[float, float]:
    """Mean and standard deviation over repeats of ref/other, each round's two timings taken back to back."""
    r = [a / b for a, b in zip(ref, other)]
    return statistics.fmean(r), (statistics.stdev(r) if len(r) > 1 else float("nan"))


def deploy_rows(engines: dict, flops: int | None, batches, repeats: int, size: int) -> list[dict]:
    """One row per (batch, engine): images/s, ms/batch (medians over the repeats), ratios to mmfm fp32 and ORT
    fp32 (mean +- std over the repeats of each round's paired ratio: same batch, interleaved), GFLOP/s, and the
    min cosine of its embeddings with mmfm fp32's on the same inputs (the accuracy that speed was bought with)."""
    rows = []
    for bs in batches:
        x = torch.randn(bs, 3, size, size, generator=torch.Generator().manual_seed(bs))
        with torch.inference_mode():
            ref = engines["mmfm fp32"](x)
            cos = {k: min_cosine(f(x), ref) for k, f in engines.items()}
            times = time_interleaved({k: (lambda f=f: f(x)) for k, f in engines.items()}, repeats, "cpu",
                                     pause=0.05, every=True, min_round_s=0.3)
        for k, ts in times.items():
            s = statistics.median(ts)
            gflops = flops * bs / s / 1e9 if flops else float("nan")
            vs_fp32, vs_fp32_std = paired_ratio(times["mmfm fp32"], ts)
            vs_ort, vs_ort_std = paired_ratio(times["ort fp32"], ts) if "ort fp32" in times else (float("nan"),) * 2
            rows.append({"line": f"encode_image b{bs}", "batch": bs, "engine": k, "images_per_s": bs / s,
                         "ms_per_batch": 1e3 * s, "repeats": len(ts),
                         "vs_mmfm_fp32": vs_fp32, "vs_mmfm_fp32_std": vs_fp32_std,
                         "vs_ort_fp32": vs_ort, "vs_ort_fp32_std": vs_ort_std,
                         "gflops": gflops, "min_cosine_vs_fp32": cos[k]})
    return rows


def deploy_targets(rows: list[dict], native_bf16: bool | None) -> list[dict]:
    """The issue's targets, each with the ratio achieved in this run (mean +- std over the repeats; None where a
    line is missing) and a verdict drawn only where the gap to the target exceeds the spread: ``met`` True
    (mean - std >= target), False (mean + std < target), or None (within the spread, or not a target here)."""
    def ratio(bs, engine, against):
        r = [(r[against], r.get(against + "_std", float("nan"))) for r in rows if r["batch"] == bs and r["engine"] == engine]
        return r[0] if r else (None, None)
    out = [("mmfm fp32 >= 1.0x ORT fp32 at b1", *ratio(1, "mmfm fp32", "vs_ort_fp32"), 1.0, True),
           ("mmfm fp32 >= 1.2x ORT fp32 at b64", *ratio(64, "mmfm fp32", "vs_ort_fp32"), 1.2, True),
           ("bf16 >= 2x mmfm fp32 at b64" + ("" if native_bf16 else " (no native bf16 on this CPU: not a target)"),
            *ratio(64, "mmfm bf16", "vs_mmfm_fp32"), 2.0, bool(native_bf16)),
           ("int8 >= 1.5x mmfm fp32 at b64", *ratio(64, "mmfm int8", "vs_mmfm_fp32"), 1.5, True)]
    targets = []
    for name, got, std, want, applies in out:
        spread = 0.0 if std is None or math.isnan(std) else std
        if got is None or math.isnan(got) or not applies:
            met = None
        elif got - spread >= want:
            met = True
        elif got + spread < want:
            met = False
        else:
            met = None
        targets.append({"target": name, "achieved": got, "std": std, "met": met,
                        "verdict": "n/a" if got is None or math.isnan(got) or not applies else
                        {True: "met", False: "NOT met", None: "within the spread"}[met]})
    return targets


# ---- end to end: `mmfm embed` on a folder of JPEGs vs the model alone on pre-made tensors ------------------------

def jpeg_folder(root: Path, count: int, seed: int = 0) -> list[Path]:
    """``count`` synthetic photos (256-500 px a side: smooth gradients, shapes, a little noise) as JPEGs under
    ``root``, made once: ``done.json`` is written last, so a folder with it is complete and reused."""
    import numpy as np
    import PIL.Image
    import PIL.ImageDraw

    from mmfm.util.atomic import atomic_write, atomic_write_json

    folder = root / f"jpegs-{count}-seed{seed}"
    paths = [folder / f"{i:05d}.jpg" for i in range(count)]
    if (folder / "done.json").exists() and all(p.exists() for p in paths):
        return paths
    rng = np.random.default_rng(seed)
    for path in paths:
        w, h = (int(v) for v in rng.integers(256, 501, size=2))
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        c0, c1 = rng.uniform(0, 255, size=(2, 3))
        t = (xx / w * rng.uniform(-1, 1) + yy / h * rng.uniform(-1, 1)) % 1.0
        img = (c0 + (c1 - c0) * t[..., None] + rng.normal(0, 6, size=(h, w, 3))).clip(0, 255).astype(np.uint8)
        pil = PIL.Image.fromarray(img)
        draw = PIL.ImageDraw.Draw(pil)
        for _ in range(int(rng.integers(3, 9))):
            x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
            box = [x0, y0, x0 + int(rng.integers(20, w // 2)), y0 + int(rng.integers(20, h // 2))]
            fill = tuple(int(v) for v in rng.integers(0, 256, size=3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
        atomic_write(path, lambda tmp, pil=pil: pil.save(tmp, format="JPEG", quality=90))
    atomic_write_json(folder / "done.json", {"count": count, "seed": seed})
    return paths


def end_to_end(model: torch.nn.Module, paths: list[Path], batch: int, repeats: int, workers: int | None) -> dict:
    """Images/s of ``embed_images`` (what ``mmfm embed`` runs: decode and transform in DataLoader workers,
    its default worker count) against the model alone on pre-made tensors of the same count and batch
    size, the two passes alternated ``repeats`` times; the ratio is the share of model speed embed keeps."""
    import inspect

    from mmfm.deploy import embed_images

    if workers is None:
        workers = inspect.signature(embed_images).parameters["workers"].default
    size = model.config.vision.image_size
    x = torch.randn(batch, 3, size, size)
    sizes = [min(batch, len(paths) - i) for i in range(0, len(paths), batch)]

    def model_only():
        with torch.no_grad():
            for n in sizes:
                model.encode_image(x[:n], normalize=True).float().cpu()

    def embed():
        done = embed_images(model, [str(p) for p in paths], batch_size=batch, workers=workers)
        assert len(done.paths) == len(paths), done.skipped[:3]

    model_only()   # warm up the kernels once; embed pays its worker start-up every time, as the CLI does
    e2e, alone = [], []
    for _ in range(repeats):
        for fn, out in ((embed, e2e), (model_only, alone)):
            t0 = time.perf_counter()
            fn()
            out.append(len(paths) / (time.perf_counter() - t0))
    mean, std = paired_ratio(e2e, alone)
    spread = 0.0 if math.isnan(std) else std
    return {"images": len(paths), "batch": batch, "workers": workers, "repeats": repeats,
            "embed_images_per_s": statistics.median(e2e), "model_only_images_per_s": statistics.median(alone),
            "ratio": mean, "ratio_std": std, "target": 0.8,
            "met": True if mean - spread >= 0.8 else False if mean + spread < 0.8 else None}


def deploy_report(args, tmp: Path) -> dict:
    """The deployment lines (CPU only: ONNX Runtime's CPU provider and mmfm's CPU int8/bf16 paths)."""
    from mmfm.info import flops_per_image
    from mmfm.models.precision import cpu_has_native_bf16

    from mmfm.util.malloc import keep_large_blocks

    # As mmfm's inference commands run (mmfm.util.malloc): activations reused in place, not re-faulted per call.
    # Process-wide, so ONNX Runtime (which keeps its own arena) runs under the same setting.
    malloc = "keep_large_blocks" if args.malloc == "keep" and keep_large_blocks() else "glibc default"
    threads = torch.get_num_threads()
    peak = matmul_peak(args.peak_n, args.repeats)
    engines, unavailable, fp32 = build_deploy_engines(args.deploy_arch, tmp, threads)
    flops = flops_per_image(fp32)
    rows = deploy_rows(engines, flops, args.deploy_batches, args.repeats, fp32.config.vision.image_size)
    # Measured again after the rows, the better of the two kept: a busy spell during one measurement would
    # otherwise put the peak below the rates it is compared with.
    peak = best_peak(peak, matmul_peak(args.peak_n, args.repeats))
    for r in rows:   # the share of the peak of its own precision's kernel
        r["pct_of_peak"] = 100 * r["gflops"] / peak["gflops"].get(r["engine"].split()[-1], float("nan"))
    del engines     # the ONNX Runtime sessions' threads must not share the cores with the end-to-end line
    try:
        import onnxruntime
        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = None
    report = {"arch": args.deploy_arch, "threads": threads, "onnxruntime": ort_version, "malloc": malloc,
              "native_bf16": cpu_has_native_bf16(), "flops_per_image": flops, "matmul_peak": peak,
              "unavailable": unavailable, "rows": rows,
              "agreement": "min cosine of each engine's image embeddings with mmfm fp32's on the timed inputs "
                           "(random pixels, random weights)"}
    report["targets"] = deploy_targets(rows, report["native_bf16"])
    print_deploy(report)    # now: the end-to-end line takes minutes more
    if args.e2e_images:
        paths = jpeg_folder(Path(args.jpeg_cache) if args.jpeg_cache else tmp, args.e2e_images)
        report["end_to_end"] = end_to_end(fp32, paths, args.e2e_batch, args.e2e_repeats, args.e2e_workers)
        print_end_to_end(report["end_to_end"])
    return report


def print_deploy(report: dict) -> None:
    peak = report["matmul_peak"]
    print(f"\ndeployment lines: {report['arch']} image encode, CPU, {report['threads']} threads (torch and ONNX Runtime "
          f"{report['onnxruntime'] or 'not installed'}), native bf16: {report['native_bf16']}, "
          f"{(report['flops_per_image'] or float('nan')) / 1e9:.2f} GFLOP/image, allocator: {report.get('malloc', 'glibc default')}")
    print(f"measured matmul peak ({peak['n']}^2 torch.mm): " +
          ", ".join(f"{k} {v:.0f}" for k, v in peak["gflops"].items()) + f" GFLOP/s (int8: integer GOP/s); best {peak['best']:.0f} "
          f"({peak['best_kernel']})")
    for name, why in report["unavailable"].items():
        print(f"{name}: unavailable ({why})")
    header = ("| line | engine | images/s | ms/batch | vs mmfm fp32 (mean +- std) | vs ORT fp32 (mean +- std) | GFLOP/s "
              "| % of its mm peak | min cos vs fp32 |")
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for r in report["rows"]:
        print(f"| {r['line']} | {r['engine']} | {r['images_per_s']:.1f} | {r['ms_per_batch']:.1f} | "
              f"{r['vs_mmfm_fp32']:.2f}x +- {r['vs_mmfm_fp32_std']:.2f} | {r['vs_ort_fp32']:.2f}x +- {r['vs_ort_fp32_std']:.2f} | {r['gflops']:.0f} | {r['pct_of_peak']:.0f}% | "
              f"{r['min_cosine_vs_fp32']:.5f} |")
    for t in report["targets"]:
        got = "missing" if t["achieved"] is None else f"{t['achieved']:.2f}x +- {t['std']:.2f}"
        print(f"target {t['target']}: {got} ({t['verdict']})", flush=True)


def print_end_to_end(e: dict) -> None:
    print(f"end to end: embed_images on {e['images']} JPEGs, batch {e['batch']}, {e['workers']} workers: "
              f"{e['embed_images_per_s']:.1f} images/s vs model only {e['model_only_images_per_s']:.1f} images/s = "
              f"{100 * e['ratio']:.0f}% +- {100 * e['ratio_std']:.0f} (target >= {100 * e['target']:.0f}%: "
              f"{ {True: 'met', False: 'NOT met', None: 'within the spread'}[e['met']]})", flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", nargs="+", default=["ViT-B-32", "RN50"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--train-batch", type=int, default=32)
    ap.add_argument("--no-memory", action="store_true", help="skip the subprocess peak-memory line")
    ap.add_argument("--memory-only", action="store_true", help="only the peak-memory line")
    ap.add_argument("--train-only", action="store_true", help="only the training-step and memory lines")
    ap.add_argument("--deploy", action="store_true", help="only the deployment lines (CPU)")
    ap.add_argument("--no-deploy", action="store_true", help="skip the deployment lines")
    ap.add_argument("--deploy-arch", default="ViT-B-32")
    ap.add_argument("--deploy-batches", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--malloc", choices=["keep", "default"], default="keep",
                    help="deployment lines: glibc's large-block policy of mmfm's inference commands (keep, "
                         "mmfm.util.malloc.keep_large_blocks) or glibc's default")
    ap.add_argument("--peak-n", type=int, default=2048, help="matrix size of the matmul peak line")
    ap.add_argument("--e2e-images", type=int, default=2048, help="JPEGs for the end-to-end line (0: skip it)")
    ap.add_argument("--e2e-batch", type=int, default=64)
    ap.add_argument("--e2e-repeats", type=int, default=3)
    ap.add_argument("--e2e-workers", type=int, default=None, help="default: embed_images' default")
    ap.add_argument("--jpeg-cache", default=None, help="folder to keep the generated JPEGs in (default: a temp one)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    rows, deploy = [], None
    with tempfile.TemporaryDirectory() as d:
        for arch in ([] if args.deploy else args.archs):
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
        print_rows(rows, device, dtype)
        if args.deploy or not (args.no_deploy or args.memory_only or args.train_only):
            deploy = deploy_report(args, Path(d))
    if args.json:
        from mmfm.util.atomic import atomic_write_json
        atomic_write_json(args.json, {"device": device, "dtype": str(dtype), "torch": torch.__version__,
                                      "rows": rows, **({"deploy": deploy} if deploy else {})})


def print_rows(rows: list[dict], device: str, dtype: torch.dtype) -> None:
    """The library comparison table; adds each row's ratio to its best peer."""
    libs = ["mmfm", "open_clip", "hf"]
    print(f"device: {device} ({dtype}), torch {torch.__version__}, threads {torch.get_num_threads()}")
    if rows:
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
        print(f"| {r['arch']} | {r['line']} | {r['unit']} | " + " | ".join(cells) + f" | {ratio:.3f} |", flush=True)


if __name__ == "__main__":
    main()
