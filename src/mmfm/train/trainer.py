"""One trainer for every model family: anything an ``Objective`` can turn into a loss.

What it adds around the objective: AdamW + warmup/cosine, clipping, freezing by config, bf16/fp16
autocast, gradient checkpointing, torch.compile, DDP, atomic checkpoints with exact resume (map-style
data and streams alike), NaN guard, progress bar + JSONL + TensorBoard + PNG curves, and the
measurement report.

Without an output folder (``out_dir=None``) it is an inner loop, e.g. a few-shot episode run many times:
nothing is written (no checkpoints, metrics, TensorBoard, curves), nothing resumed, no latency measured,
no progress bar unless the config sets ``progress`` explicitly, and the process's random generators are
left to the caller (it seeds them; the run draws only what its model and data draw).

Nothing is lost to a fault: Ctrl-C saves a checkpoint between steps and re-raises KeyboardInterrupt;
a SIGKILL loses at most the steps since the last checkpoint (the same command resumes, and the logs
keep one row per step); unreadable samples are skipped and counted on every rank alike.
"""
from __future__ import annotations

import json
import math
import random
import signal
import sys
import threading
import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

from ..measure import count_parameters, measure_latency, track_memory
from ..models.precision import refuse_int8
from ..util.atomic import atomic_write_text
from ..util.modes import eval_mode
from .checkpointing import (latest_valid_checkpoint, prune_checkpoints, remove_stale_temporaries, rng_state,
                            save_checkpoint, set_rng_state)
from .config import TrainConfig
from .distributed import DistInfo, all_reduce_mean, all_reduce_sum, barrier, init_distributed, local_only
from ..util.malloc import return_large_blocks_to_the_os
from .objectives import ContrastiveObjective, Objective, batch_size, split_batch, unwrap
from .sampler import ResumableBatchSampler, SeededItems
from .schedule import build_optimizer, build_scheduler


_EPOCH_END = object()   # what Trainer._batches yields after a loader's last batch


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainResult:
    out_dir: str | None
    steps: int
    epochs: float
    samples_seen: int
    wall_time_s: float
    samples_per_s: float
    final_loss: float | None
    skipped_samples: int
    params: dict
    memory: dict
    latency: dict = field(default_factory=dict)
    val: dict = field(default_factory=dict)
    checkpoint: str | None = None
    resumed_from_step: int | None = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def apply_freezing(model: nn.Module, cfg: TrainConfig) -> None:
    """Freeze by parameter-name prefix and lock towers as the config asks."""
    if cfg.lock_image is not None:
        unwrap(model).lock_image_tower(cfg.lock_image)
    if cfg.lock_text is not None:
        unwrap(model).lock_text_tower(cfg.lock_text)
    if cfg.freeze:
        names = [n for n, _ in model.named_parameters()]
        for prefix in cfg.freeze:
            hits = [n for n in names if n == prefix or n.startswith(prefix + ".")]
            if not hits:
                raise ValueError(f"train.freeze: {prefix!r} matches no parameter; top-level modules are "
                                 f"{sorted({n.split('.')[0] for n in names})}")
        for n, p in model.named_parameters():
            if any(n == pre or n.startswith(pre + ".") for pre in cfg.freeze):
                p.requires_grad_(False)


def truncate_metrics(path: Path, step: int) -> None:
    """Keep only the rows of steps <= ``step`` (the one resumed from): the steps after it are about to be
    run again, and a kill may have left a torn last line. One row per step after any number of resumes."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
            kept.append(line + "\n")
    atomic_write_text(path, "".join(kept))


def epochs_done(state: dict, steps_per_epoch: int | None) -> float:
    """Epochs trained, with the fraction of the current one where its length is known (a stream's only
    after its first epoch; before that, whole epochs)."""
    per_epoch = steps_per_epoch or state.get("epoch_steps")
    return state["epoch"] + (state["step_in_epoch"] / per_epoch if per_epoch else 0.0)


def default_collate(batch: list) -> dict:
    from ..data.pipeline import collate_skip_none
    return collate_skip_none(batch)


def new_state() -> dict:
    """The counters a checkpoint's ``state`` holds (a dict, as every checkpoint written so far stores it)."""
    return {"step": 0, "epoch": 0, "step_in_epoch": 0, "samples_seen": 0, "train_time_s": 0.0,
            "history": [], "val_history": [], "best": None, "skipped": 0}


@dataclass
class _Run:
    """Everything one ``fit`` call sets up and carries from step to step."""
    info: DistInfo
    device: torch.device
    model: nn.Module
    autocast: Callable
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    loader: Any
    sampler: ResumableBatchSampler | None
    items: SeededItems | None
    steps_per_epoch: int | None
    total_steps: int
    state: dict = field(default_factory=new_state)
    train_model: nn.Module | None = None     # the model as trained: DDP / compile wrappers around ``model``
    resumed_from: int | None = None
    saved_step: int | None = None
    writer: Any = None
    metrics_file: Any = None
    progress: Any = None
    trainable: list = field(default_factory=list)
    prior_time: float = 0.0                  # training seconds before a resume
    t_start: float = 0.0
    t_window: float = 0.0                    # start of the current logging window and its samples
    n_window: int = 0
    last_loss: float | None = None
    interrupted: bool = False

    def sync(self, last: bool):
        """DDP: all-reduce gradients only on the last micro-batch."""
        return nullcontext() if (last or not self.info.enabled) else self.train_model.no_sync()

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()


class Trainer:
    def __init__(self, model: nn.Module, train_data, cfg: TrainConfig, out_dir: str | Path | None,
                 objective: Objective | None = None, val_data=None,
                 eval_fn: Callable[[nn.Module], dict[str, float]] | None = None,
                 collate_fn: Callable | None = None, best_metric: str = "val_loss", best_mode: str = "min"):
        refuse_int8(model, "train")
        self.model, self.cfg = model, cfg
        self.out_dir = Path(out_dir) if out_dir is not None else None   # None: an inner loop, nothing written
        self.train_data, self.val_data = train_data, val_data
        self.objective = objective or ContrastiveObjective.from_config(cfg)
        self.eval_fn, self.collate_fn = eval_fn, collate_fn or default_collate
        self.best_metric, self.best_mode = best_metric, best_mode
        self.ckpt_dir = self.out_dir / "checkpoints" if self.out_dir is not None else None

    # -- set-up -------------------------------------------------------------------------------
    def _device(self, info: DistInfo) -> torch.device:
        if self.cfg.device:
            return torch.device(self.cfg.device)
        if torch.cuda.is_available():
            return torch.device(f"cuda:{info.local_rank}")
        return torch.device("cpu")

    def _autocast(self, device: torch.device):
        p = self.cfg.precision
        if p == "fp32":
            return nullcontext
        if p == "fp16" and device.type != "cuda":
            raise ValueError("precision fp16 needs a CUDA device (it uses a GradScaler); use bf16 on CPU")
        dtype = torch.bfloat16 if p == "bf16" else torch.float16
        return lambda: torch.autocast(device.type, dtype=dtype)

    def _loader(self, info: DistInfo):
        data = self.train_data
        per_rank = self.cfg.batch_size * self.cfg.accum_steps
        workers = self.cfg.num_workers
        # Each DataLoader pass draws its workers' base seed from the global generator, which an inner loop
        # leaves to its caller: it draws from its own.
        generator = None if self.out_dir is not None else torch.Generator().manual_seed(self.cfg.seed)
        if isinstance(data, IterableDataset):
            loader = DataLoader(data, batch_size=per_rank, num_workers=workers, collate_fn=self.collate_fn,
                                drop_last=True, generator=generator)
            return loader, None, None
        items = SeededItems(data, self.cfg.seed)
        sampler = ResumableBatchSampler(len(items), per_rank, self.cfg.seed, info.rank, info.world_size)
        loader = DataLoader(items, batch_sampler=sampler, num_workers=workers, collate_fn=self.collate_fn,
                            pin_memory=torch.cuda.is_available(), persistent_workers=False, generator=generator)
        return loader, sampler, items

    def _to_device(self, batch: dict, device) -> dict:
        return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}

    # -- the loop -------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        # An inner loop (no output folder) may run on one rank of a DDP job: it must not join any collective.
        with local_only() if self.out_dir is None else nullcontext():
            return self._fit()

    def _fit(self) -> TrainResult:
        run = self._set_up()          # device, seed, freezing, optimizer, schedule, data
        self._resume(run)             # from the newest valid checkpoint, if any
        self._wrap(run)               # DDP, torch.compile
        self._open_outputs(run)       # metrics.jsonl, TensorBoard, progress bar
        try:
            with track_memory() as mem, self._deferred_sigint():
                while run.state["step"] < run.total_steps and not run.interrupted:
                    self._epoch(run)
                if run.interrupted:
                    self._stop_interrupted(run)   # saves, then raises KeyboardInterrupt
        finally:
            self._close_outputs(run)
        barrier()
        return self._result(run, mem)

    def _set_up(self) -> _Run:
        cfg = self.cfg
        info = init_distributed(cfg.device)
        device = self._device(info)
        if self.out_dir is not None:   # an inner loop's randomness is its caller's, who seeds it
            seed_everything(cfg.seed)
            self.out_dir.mkdir(parents=True, exist_ok=True)
            # Freed activations leave the process instead of staying resident. Process-wide, so an inner loop
            # (a few-shot episode inside an evaluation) leaves its caller's allocator policy as it is.
            return_large_blocks_to_the_os()
        model = self.model
        apply_freezing(model, cfg)
        if cfg.grad_checkpointing and hasattr(model, "set_grad_checkpointing"):
            model.set_grad_checkpointing(True)
        model.to(device)
        autocast = self._autocast(device)
        optimizer = build_optimizer(model, cfg)
        loader, sampler, items = self._loader(info)
        steps_per_epoch = sampler.steps_per_epoch if sampler is not None else None
        if cfg.max_steps:
            total_steps = cfg.max_steps
        elif steps_per_epoch:
            total_steps = max(1, math.ceil(cfg.epochs * steps_per_epoch))
        else:
            raise ValueError("an iterable (streaming) dataset has no length: set train.max_steps")
        scheduler = build_scheduler(optimizer, cfg, total_steps)
        scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" else None
        return _Run(info, device, model, autocast, optimizer, scheduler, scaler, loader, sampler, items,
                    steps_per_epoch, total_steps)

    def _resume(self, run: _Run) -> None:
        if self.out_dir is None:
            return
        if run.info.is_main:
            for stale in remove_stale_temporaries(self.ckpt_dir):
                print(f"removed {stale.name}, left by a run killed while saving")
        if not self.cfg.resume or not (found := latest_valid_checkpoint(self.ckpt_dir)):
            return
        path, ckpt = found
        changed = {k for k, v in self.cfg.model_dump().items()
                   if k not in ("resume", "progress", "max_steps", "epochs", "eval_every", "ckpt_every", "log_every",
                                "num_workers", "device", "tensorboard", "grad_chunk") and ckpt.get("config", {}).get(k, v) != v}
        if changed and run.info.is_main:
            warnings.warn(f"resuming from {path}, whose training config differs in {sorted(changed)}; "
                          f"use a new output folder or resume=false to start over")
        unwrap(run.model).load_state_dict(ckpt["model"])
        run.optimizer.load_state_dict(ckpt["optimizer"])
        run.scheduler.load_state_dict(ckpt["scheduler"])
        if run.scaler is not None and ckpt.get("scaler"):
            run.scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        run.state.update(ckpt["state"])
        run.resumed_from = run.saved_step = run.state["step"]
        if run.info.is_main:
            print(f"resumed from {path} (step {run.state['step']})")

    def _wrap(self, run: _Run) -> None:
        run.train_model = run.model
        if run.info.enabled:
            run.train_model = nn.parallel.DistributedDataParallel(
                run.model, device_ids=[run.device.index] if run.device.type == "cuda" else None)
        if self.cfg.compile:
            run.train_model = torch.compile(run.train_model)

    def _open_outputs(self, run: _Run) -> None:
        step = run.state["step"]
        if run.info.is_main and self.out_dir is not None:
            truncate_metrics(self.out_dir / "metrics.jsonl", step)
            run.writer = self._tensorboard(step)
            run.metrics_file = open(self.out_dir / "metrics.jsonl", "a")
        if run.info.is_main and self._shows_progress():
            from tqdm.auto import tqdm
            run.progress = tqdm(total=run.total_steps, initial=step, desc="train", unit="step", dynamic_ncols=True)
        run.trainable = [p for p in run.model.parameters() if p.requires_grad]
        run.prior_time, run.t_start = run.state["train_time_s"], time.perf_counter()
        run.t_window = time.perf_counter()

    def _shows_progress(self) -> bool:
        """A run with an output folder shows its progress unless told not to; an inner loop only when told to."""
        if self.out_dir is not None:
            return self.cfg.progress
        return self.cfg.progress and "progress" in self.cfg.model_fields_set

    def _kept(self) -> str:
        """Where the last good weights are, for the divergence messages."""
        if self.ckpt_dir is None:
            return "no checkpoint is kept (the trainer has no output folder)"
        return f"the last good checkpoint is kept in {self.ckpt_dir}"

    def _epoch(self, run: _Run) -> None:
        """One pass over the data (or what is left of it), then the epoch counters move on."""
        state = run.state
        self._start_epoch(run.sampler, run.items, state)
        run.model.train()
        step_at_start, batches = state["step"], 0
        for batch in self._batches(run.loader):
            ended = batch is _EPOCH_END
            batch, n_skipped = self._trim(None if ended else batch)
            # One small all-reduce keeps the ranks in step: they stop together on Ctrl-C, end the
            # epoch together when one rank's stream runs out, skip a step together when one rank
            # lost its whole batch, and count every rank's samples.
            run.interrupted, ended, n_skipped, n, any_empty = self._agree(batch, ended, n_skipped, run.device, run.info)
            if run.interrupted or ended:
                break
            state["skipped"] += n_skipped
            batches += 1
            if any_empty:
                state["step_in_epoch"] += 1
                continue
            out, grad_norm = self._step(run, batch)
            self._count_step(run, n, out["loss"])
            if self._after_step(run, out, grad_norm):   # the last step
                break
        if run.interrupted or state["step"] >= run.total_steps:
            return
        self._end_epoch(run, step_at_start, batches)

    def _step(self, run: _Run, batch: dict) -> tuple[dict, float | None]:
        """One optimizer step: forward/backward over the micro-batches, divergence guard, clip, step, schedule."""
        cfg, step = self.cfg, run.state["step"] + 1
        micro = split_batch(self._to_device(batch, run.device), cfg.accum_steps)
        run.optimizer.zero_grad(set_to_none=True)
        out = self.objective.forward_backward(run.train_model, micro, run.backward, run.autocast, run.sync)
        loss = out["loss"]
        if not math.isfinite(loss):
            raise TrainingDiverged(
                f"loss is {loss} at step {step}: training stopped; {self._kept()} (lower the learning rate, "
                f"use bf16/fp32, or enable grad_clip)")
        if run.scaler is not None:
            run.scaler.unscale_(run.optimizer)
        grad_norm = None
        if cfg.grad_clip:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(run.trainable, cfg.grad_clip))
            if run.scaler is None and not math.isfinite(grad_norm):
                raise TrainingDiverged(
                    f"gradient norm is {grad_norm} at step {step}: training stopped; {self._kept()}")
        if run.scaler is not None:
            run.scaler.step(run.optimizer)
            run.scaler.update()
        else:
            run.optimizer.step()
        run.scheduler.step()
        return out, grad_norm

    @staticmethod
    def _count_step(run: _Run, n: int, loss: float) -> None:
        state = run.state
        state["step"] += 1
        state["step_in_epoch"] += 1
        state["samples_seen"] += n
        run.n_window += n
        run.last_loss = loss
        if run.progress is not None:
            run.progress.update(1)
            run.progress.set_postfix(loss=f"{loss:.4f}", epoch=state["epoch"])

    def _after_step(self, run: _Run, out: dict, grad_norm: float | None) -> bool:
        """The step's bookkeeping: log, validate, checkpoint. True after the last step."""
        cfg, state = self.cfg, run.state
        step = state["step"]
        last_step = step == run.total_steps
        if step % cfg.log_every == 0 or last_step:
            self._log_step(run, out, grad_norm)
        if self._due(cfg.eval_every, step) or last_step:
            self._validate(run)
        if (self._due(cfg.ckpt_every, step) or last_step) and run.info.is_main and self.out_dir is not None:
            self._save_run(run)
        return last_step

    def _log_step(self, run: _Run, out: dict, grad_norm: float | None) -> None:
        now = time.perf_counter()
        rec = {"step": run.state["step"], "epoch": epochs_done(run.state, run.steps_per_epoch),
               "loss": float(all_reduce_mean(torch.tensor(out["loss"]))), "lr": run.scheduler.get_last_lr()[0],
               "samples_per_s": run.n_window / max(now - run.t_window, 1e-9), "grad_norm": grad_norm}
        if out.get("logit_scale") is not None:
            rec["logit_scale"] = out["logit_scale"]
        run.t_window, run.n_window = now, 0
        run.state["history"].append(rec)
        self._log(rec, run.writer, run.metrics_file, "train")

    def _save_run(self, run: _Run) -> None:
        run.state["train_time_s"] = run.prior_time + time.perf_counter() - run.t_start
        self._save(run.model, run.optimizer, run.scheduler, run.scaler, run.state)
        run.saved_step = run.state["step"]

    def _end_epoch(self, run: _Run, step_at_start: int, batches: int) -> None:
        """The epoch ran out: refuse data that can never give a step, else move the counters on."""
        state, cfg = run.state, self.cfg
        if state["step_in_epoch"] == 0:   # the next epoch would give nothing either
            raise ValueError(
                f"epoch {state['epoch']} gave no full batch of {cfg.batch_size * cfg.accum_steps} samples "
                f"on some rank: the training data is shorter than one batch per rank (for shards: "
                f"fewer shards than ranks x DataLoader workers?); use more data or a smaller batch")
        if batches and state["step"] == step_at_start:   # and so would every later one
            raise ValueError(f"epoch {state['epoch']} had no readable batch ({state['skipped']} samples "
                             f"skipped so far, see the warnings): check the data")
        state["epoch"] += 1
        state["epoch_steps"] = state["step_in_epoch"]   # a stream's epoch length, now known
        state["step_in_epoch"] = 0

    def _stop_interrupted(self, run: _Run) -> None:
        # Between steps, so the checkpoint is exactly the one ckpt_every would have written here.
        saves = self.out_dir is not None
        if saves and run.info.is_main and run.state["step"] and run.saved_step != run.state["step"]:
            self._save_run(run)
        barrier()   # no rank exits (and makes torchrun kill the others) before the save is done
        message = f"interrupted at step {run.state['step']}" + ("; resume with the same command" if saves else "")
        if run.info.is_main:
            if run.progress is not None:
                run.progress.close()
            print(message, file=sys.stderr, flush=True)
        raise KeyboardInterrupt(message)

    @staticmethod
    def _close_outputs(run: _Run) -> None:
        for handle in (run.progress, run.metrics_file, run.writer):
            if handle is not None:
                handle.close()

    def _result(self, run: _Run, mem) -> TrainResult:
        state, model = run.state, run.model
        wall = run.prior_time + time.perf_counter() - run.t_start
        writes = self.out_dir is not None
        result = TrainResult(
            out_dir=str(self.out_dir) if writes else None, steps=state["step"],
            epochs=epochs_done(state, run.steps_per_epoch),
            samples_seen=state["samples_seen"], wall_time_s=wall,
            samples_per_s=state["samples_seen"] / max(wall, 1e-9), final_loss=run.last_loss,
            skipped_samples=state["skipped"], params=count_parameters(model).to_dict(), memory=mem.to_dict(),
            val=state["val_history"][-1] if state["val_history"] else {},
            checkpoint=str(self.ckpt_dir) if writes else None, resumed_from_step=run.resumed_from)
        if run.info.is_main and writes:
            result.latency = self._latency(model, run.device, run.autocast)
            from ..report.plots import plot_training_curves
            plot_training_curves(state["history"], state["val_history"], self.out_dir / "curves.png")
        return result

    # -- the loop's pieces ------------------------------------------------------------------------
    @contextmanager
    def _deferred_sigint(self):
        """Ctrl-C sets a flag that the loop reads between steps (then it saves and stops); a second
        Ctrl-C interrupts at once. Only the main thread may install signal handlers."""
        self._interrupted = False
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.getsignal(signal.SIGINT)

        def on_sigint(signum, frame):
            self._interrupted = True
            signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGINT, on_sigint)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def _batches(self, loader):
        """The loader's batches, then ``_EPOCH_END``; ``None`` if Ctrl-C came while waiting (its workers
        die of it too). Ending with a marker lets a rank whose data ran out tell the others."""
        it = iter(loader)
        while True:
            try:
                batch = next(it)
            except StopIteration:
                yield _EPOCH_END
                return
            except Exception:
                if self._interrupted:
                    yield None
                    return
                raise
            yield batch

    def _trim(self, batch: dict | None) -> tuple[dict | None, int]:
        """Drop the skipped-sample count from the batch; cut a short batch to whole micro-batches."""
        if batch is None:
            return None, 0
        n_skipped = int(batch.pop("n_skipped", 0))
        k = self.cfg.accum_steps
        n = batch_size(batch)
        if n < self.cfg.batch_size * k and n % k:
            # corrupt images were dropped: micro-batches must stay equal, so trim
            n = (n // k) * k
            batch = {key: (v[:n] if torch.is_tensor(v) and v.ndim else v) for key, v in batch.items()}
        return batch, n_skipped

    def _agree(self, batch: dict | None, ended: bool, n_skipped: int, device,
               info: DistInfo) -> tuple[bool, bool, int, int, bool]:
        """(stop, epoch over, samples skipped, samples in the step, some rank has none) over all ranks."""
        n = batch_size(batch) if batch is not None else 0
        local = torch.tensor([int(self._interrupted or (batch is None and not ended)), int(ended), n_skipped, n,
                              int(n == 0)], dtype=torch.int64, device=device if info.enabled else "cpu")
        stop, over, skipped, total, empty = (int(v) for v in all_reduce_sum(local).cpu())
        return bool(stop), bool(over), skipped, total, bool(empty)

    def _start_epoch(self, sampler, items, state) -> None:
        """Point the data at (epoch, step in epoch): map-style data through the sampler, a stream by
        skipping the records of the batches already trained on."""
        epoch, step_in_epoch = state["epoch"], state["step_in_epoch"]
        if sampler is not None:
            sampler.set_epoch(epoch, step_in_epoch)
            items.set_epoch(epoch)
            return
        data = self.train_data
        if hasattr(data, "set_epoch"):
            data.set_epoch(epoch)
        if hasattr(data, "resume_at"):
            data.resume_at(step_in_epoch, self.cfg.batch_size * self.cfg.accum_steps)
        elif step_in_epoch:
            warnings.warn(f"{type(data).__name__} cannot start a stream mid-epoch (it has no resume_at): epoch "
                          f"{epoch} restarts from its first sample, so {step_in_epoch} batches are seen twice")

    # -- pieces ---------------------------------------------------------------------------------
    @staticmethod
    def _due(every: int | None, step: int) -> bool:
        return bool(every) and step % every == 0

    def _tensorboard(self, step: int):
        if not self.cfg.tensorboard:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return None
        # purge_step: events past the resumed step are dropped, so resumed curves do not double back
        return SummaryWriter(str(self.out_dir / "tensorboard"), purge_step=step + 1 if step else None)

    @staticmethod
    def _log(rec: dict, writer, metrics_file, split: str) -> None:
        if metrics_file is not None:
            metrics_file.write(json.dumps({"split": split, **rec}) + "\n")
            metrics_file.flush()
        if writer is not None:
            for k, v in rec.items():
                if k != "step" and isinstance(v, (int, float)):
                    writer.add_scalar(f"{split}/{k}", v, rec["step"])

    @torch.no_grad()
    def _validate(self, run: _Run) -> None:
        model, state, device, autocast, info = run.model, run.state, run.device, run.autocast, run.info
        rec: dict[str, Any] = {"step": state["step"]}
        model.eval()
        if self.val_data is not None:
            loader = DataLoader(self.val_data, batch_size=self.cfg.batch_size * self.cfg.accum_steps,
                                collate_fn=self.collate_fn, num_workers=self.cfg.num_workers)
            total, count = 0.0, 0
            for batch in loader:
                batch.pop("n_skipped", None)
                batch = self._to_device(batch, device)
                with autocast():
                    n = batch_size(batch)
                    total += self.objective.eval_loss(unwrap(model), batch) * n
                    count += n
            rec["val_loss"] = total / max(count, 1)
        if self.eval_fn is not None and info.is_main:
            rec.update(self.eval_fn(unwrap(model)))
        model.train()
        if len(rec) == 1:
            return
        state["val_history"].append(rec)
        if info.is_main:
            self._log(rec, run.writer, run.metrics_file, "val")
        metric = rec.get(self.best_metric)
        if metric is not None:
            best = state["best"]
            better = best is None or (metric < best["value"] if self.best_mode == "min" else metric > best["value"])
            if better:
                state["best"] = {"metric": self.best_metric, "value": metric, "step": state["step"]}
                if info.is_main and self.out_dir is not None:
                    save_checkpoint({"model": unwrap(model).state_dict(), "best": state["best"]},
                                    self.ckpt_dir / "best.pt")

    def _save(self, model, optimizer, scheduler, scaler, state) -> None:
        ckpt = {"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler is not None else None,
                "rng": rng_state(), "state": {k: v for k, v in state.items()}, "config": self.cfg.model_dump()}
        save_checkpoint(ckpt, self.ckpt_dir / f"ckpt-{state['step']:08d}.pt")
        prune_checkpoints(self.ckpt_dir, self.cfg.keep_last)

    def _latency(self, model, device, autocast) -> dict:
        """Per-sample inference latency at batch 1 and at the training micro-batch size."""
        data = self.val_data if self.val_data is not None else None
        if data is None or isinstance(data, IterableDataset):
            return {}
        out = {}
        with eval_mode(model):      # every module's own mode comes back: a locked tower stays in eval
            for bs in sorted({1, min(self.cfg.batch_size, len(data))}):
                batch = self._to_device(self.collate_fn([data[i] for i in range(bs)]), device)
                batch.pop("n_skipped", None)
                fn = self.objective.inference(model, batch)
                with autocast():
                    out[f"batch_{bs}"] = measure_latency(fn, bs, repeats=10 if bs > 1 else 20, warmup=2).to_dict()
        return out
