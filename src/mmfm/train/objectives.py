"""Objectives turn (model, batch) into a loss and its gradients. The trainer knows nothing else.

``ContrastiveObjective`` is where contrastive-correct gradient accumulation and distributed training
live. Both have the same shape: the loss is a function of the features of a *global* batch (all
ranks x all micro-batches) but only one slice of it can carry gradient at a time (the micro-batch
being re-run, or this rank's part). Because the loss is a sum of per-slice paths through the model,

    dL/dtheta = sum_slices (dL/dF_slice) (dF_slice/dtheta),

computing the full loss once per slice with only that slice live, and back-propagating each, adds up
to exactly the gradient of one big batch. The temperature is shared by every slice, so its gradient
is let through only once (micro-batch 0) and divided by the world size to undo DDP's averaging.

The same argument splits a slice's path by tower: the image and text features of a slice are separate
paths too, so a single process re-runs and back-propagates the image tower, then the text tower, each
against the cached features of everything else. The gradient pass then holds one tower's activations at
a time instead of both (ViT-B-32 at 8 x accumulation 4: the text tower's backward used to run with the
image tower's whole graph waiting behind it). All image halves run before the first text half, so the image
tower's activations never coexist with the text tower's gradients, and the token table's gradient stays
sparse until the pass ends: the pass's peak is then no higher than the optimizer step's.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Callable, ContextManager

import torch
from torch import nn

from .distributed import all_gather_sizes, all_gather_variable, dist_info
from .losses import clip_loss, siglip_loss

Backward = Callable[[torch.Tensor], None]
SyncContext = Callable[[bool], ContextManager]


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DDP / torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def batch_size(batch: dict) -> int:
    for key in ("image", "input_ids", "text"):
        if key in batch and torch.is_tensor(batch[key]):
            return batch[key].shape[0]
    raise ValueError(f"cannot tell the batch size of a batch with keys {sorted(batch)}")


def split_batch(batch: dict, k: int) -> list[dict]:
    """Split a batch dict into k micro-batches along dim 0 (non-tensor entries are shared)."""
    n = batch_size(batch)
    if k <= 1:
        return [batch]
    if n % k:
        raise ValueError(f"batch of {n} cannot be split into {k} equal micro-batches")
    m = n // k
    return [{key: (v[i * m:(i + 1) * m] if torch.is_tensor(v) and v.ndim > 0 and v.shape[0] == n else v)
             for key, v in batch.items()} for i in range(k)]


class Objective:
    """Default objective: the model's own loss, ``model(**inputs)["loss"]``, averaged over micro-batches.

    Right for every loss that is a mean over samples (captioning, classification), where plain
    gradient accumulation is already exact.
    """

    input_keys: tuple[str, ...] | None = None   # which batch entries to pass to the model (None: all tensors)

    def model_inputs(self, batch: dict) -> dict:
        keys = self.input_keys or [k for k, v in batch.items() if torch.is_tensor(v)]
        return {k: batch[k] for k in keys if k in batch}

    def loss(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        out = model(**self.model_inputs(batch))
        if not isinstance(out, dict) or "loss" not in out:
            raise TypeError(f"{type(unwrap(model)).__name__}.forward must return a dict with a 'loss'")
        return out

    def forward_backward(self, model: nn.Module, micro_batches: list[dict], backward: Backward,
                         autocast: Callable[[], ContextManager], sync: SyncContext) -> dict[str, float]:
        k = len(micro_batches)
        total = 0.0
        for i, mb in enumerate(micro_batches):
            with sync(i == k - 1):
                with autocast():
                    out = self.loss(model, mb)
                backward(out["loss"] / k)
            total += out["loss"].detach().float().item()
        return {"loss": total / k}

    @torch.no_grad()
    def eval_loss(self, model: nn.Module, batch: dict) -> float:
        return self.loss(model, batch)["loss"].float().item()

    def inference(self, model: nn.Module, batch: dict) -> Callable[[], object]:
        """A zero-argument callable that runs inference on ``batch`` (timed for latency reports)."""
        inputs = self.model_inputs(batch)
        return lambda: model(**inputs)


def _snapshot_buffers(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(b, b.detach().clone()) for b in model.buffers()]


def _restore_buffers(snapshot) -> None:
    with torch.no_grad():
        for b, saved in snapshot:
            b.copy_(saved)


def _cut(batch: dict, size: int) -> list[dict]:
    """A batch dict as consecutive pieces of at most ``size`` rows (non-tensor entries are shared)."""
    n = batch_size(batch)
    return [{key: (v[a:a + size] if torch.is_tensor(v) and v.ndim > 0 and v.shape[0] == n else v)
             for key, v in batch.items()} for a in range(0, n, size)]


def _splice(cached: torch.Tensor, live: torch.Tensor | None, offset: int, n: int) -> torch.Tensor:
    """The cached features of the whole batch with rows offset..offset+n replaced by the live ones (if any)."""
    if live is None:
        return cached
    return torch.cat([cached[:offset], live.float(), cached[offset + n:]])


def _pack(t: torch.Tensor):
    """What the gradient pass's graph keeps of a tensor saved for backward.

    A GELU's output, saved by the next linear layer for its weight gradient, is kept as the recipe
    ``gelu(input)``: GELU's own backward keeps that input anyway, so the recipe costs nothing, and recomputing
    it in backward (elementwise, ~1% of the layer's matmul) gives the same bits. The MLPs' GELU outputs are
    a quarter of a ViT's saved activations (ViT-B-32, micro-batch 8: 52 of 217 MiB).
    """
    base = t if t._base is None else t._base
    fn = base.grad_fn
    if fn is not None and type(fn).__name__ == "GeluBackward0":
        return (fn._saved_self, fn._saved_approximate, t.size(), t.stride(), t.storage_offset())
    return t


def _unpack(packed) -> torch.Tensor:
    if torch.is_tensor(packed):
        return packed
    x, approximate, size, stride, offset = packed
    return torch.nn.functional.gelu(x, approximate=approximate).as_strided(size, stride, offset)


def _keep_less(model: nn.Module) -> ContextManager:
    """Saved-tensor hooks for the gradient pass (not under torch.compile, which traces its own graph)."""
    if hasattr(model, "_orig_mod") or torch.compiler.is_compiling():
        return nullcontext()
    return torch.autograd.graph.saved_tensors_hooks(_pack, _unpack)


@contextmanager
def _sparse_embedding_grads(model: nn.Module, enabled: bool):
    """Inside it, trainable embedding tables get sparse gradients; on leaving, those gradients are made dense.

    A dense embedding backward builds a new table-sized gradient and then adds it into ``.grad``: for the
    text tower's token embedding (49408 x 512, 101 MB) that transient was the peak of the gradient pass.
    The sparse one holds only the rows of the tokens seen (the same sums) until the pass ends, when one dense
    ``.grad`` is made, as the optimizer and gradient clipping expect. Single process only (``enabled``).
    """
    tables = [m for m in model.modules() if type(m) is nn.Embedding and not m.sparse and m.weight.requires_grad] \
        if enabled else []
    for m in tables:
        m.sparse = True
    try:
        yield
    finally:
        for m in tables:
            m.sparse = False
            if m.weight.grad is not None and m.weight.grad.is_sparse:
                m.weight.grad = m.weight.grad.to_dense()


def _scaled_grad(t: torch.Tensor | None, g: float) -> torch.Tensor | None:
    """``t`` unchanged in value, its gradient multiplied by ``g`` (0: counted elsewhere; still in the graph,
    so DDP sees every parameter used)."""
    if t is None or g == 1.0:
        return t
    return t.detach() + (t - t.detach()) * g


class ContrastiveObjective(Objective):
    """CLIP / SigLIP training on (image, text) pairs with global-batch negatives."""

    input_keys = ("image", "text")
    tower_by_tower = True   # gradient pass of accumulation: one tower at a time (single process; see module doc)

    @classmethod
    def from_config(cls, cfg) -> "ContrastiveObjective":
        """The objective a ``TrainConfig`` asks for (its loss, local_loss and grad_chunk): the one place both the
        Trainer's default and ``mmfm run`` build it, so no setting is dropped on one of the two paths."""
        return cls(cfg.loss, cfg.local_loss, cfg.grad_chunk)

    def __init__(self, loss: str = "clip", local_loss: bool = False, grad_chunk: int | None = None):
        if loss not in ("clip", "siglip"):
            raise ValueError(f"loss {loss!r} is not one of ['clip', 'siglip']")
        if grad_chunk is not None and grad_chunk < 1:
            raise ValueError(f"grad_chunk must be a positive number of rows or None, not {grad_chunk}")
        self.loss_name, self.local_loss, self.grad_chunk = loss, local_loss, grad_chunk

    def _loss(self, img, txt, scale, bias, rows):
        if self.loss_name == "siglip":
            if bias is None:
                raise ValueError("the SigLIP loss needs a model with a logit_bias (set init_logit_bias in its config)")
            return siglip_loss(img, txt, scale, bias, rows)
        return clip_loss(img, txt, scale, rows)

    def loss(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        out = model(image=batch["image"], text=batch["text"])
        loss = self._loss(out["image_features"].float(), out["text_features"].float(), out["logit_scale"],
                          out.get("logit_bias"), None)
        return {"loss": loss, **out}

    def forward_backward(self, model, micro_batches, backward, autocast, sync) -> dict[str, float]:
        info = dist_info()
        world, k = info.world_size, len(micro_batches)
        core = unwrap(model)
        live_out = None
        if k == 1:
            with sync(True), autocast():
                live_out = model(image=micro_batches[0]["image"], text=micro_batches[0]["text"])
            local_img, local_txt = live_out["image_features"].detach(), live_out["text_features"].detach()
            pieces, rng = [(0, micro_batches[0])], [None]
        else:
            pieces = self._pieces(core, micro_batches)
            # Pass 1, no grad: features of every piece. Buffers (BatchNorm statistics) are restored
            # afterwards and RNG states recorded, so pass 2 recomputes exactly the same features.
            snapshot = _snapshot_buffers(core)
            rng, feats = [], []
            with torch.no_grad(), autocast():
                for _, piece in pieces:
                    rng.append(torch.get_rng_state())
                    o = core(image=piece["image"], text=piece["text"])
                    feats.append((o["image_features"], o["text_features"]))
            _restore_buffers(snapshot)
            local_img = torch.cat([f[0] for f in feats])
            local_txt = torch.cat([f[1] for f in feats])
        # Ranks may hold different numbers of pairs (one skipped an unreadable image): gather the sizes,
        # so every rank agrees where each rank's pairs sit in the global batch.
        rank_sizes = all_gather_sizes(local_img.shape[0], local_img.device)
        all_img = torch.cat(all_gather_variable(local_img.float(), rank_sizes))
        all_txt = torch.cat(all_gather_variable(local_txt.float(), rank_sizes))
        # Pass 2: each piece re-run with grad and back-propagated with only its rows live. In one process tower
        # by tower: every piece's image half, then every piece's text half, so the image tower's activations
        # never sit on top of the text tower's gradients (DDP's reducer wants every parameter in the
        # synchronising backward: both towers at once there).
        by_tower = live_out is None and self.tower_by_tower and world == 1
        halves = (("image",), ("text",)) if by_tower else (("image", "text"),)
        starts, offset = [], sum(rank_sizes[:info.rank])
        for j, (i, piece) in enumerate(pieces):
            if j == 0 or pieces[j - 1][0] != i:     # the first piece of micro-batch i
                start = offset
            starts.append((offset, start))
            offset += batch_size(piece)
        value = None
        # (not under torch.compile: flipping a module's flag every step would recompile its graph)
        with _sparse_embedding_grads(core, by_tower and not hasattr(model, "_orig_mod")):
            for h, keys in enumerate(halves):
                for j, (i, piece) in enumerate(pieces):
                    offset, start = starts[j]
                    n = batch_size(piece)
                    first = start == offset
                    term = slice(start, start + batch_size(micro_batches[i]))
                    if live_out is not None:
                        value = self._slice_backward(live_out, all_img, all_txt, offset, n, term, i, first, k,
                                                     world, backward)
                        continue
                    # Each half draws from the RNG state the feature pass had when it reached that half: the
                    # recorded state of the piece for its image half, the state the image half left for its text.
                    torch.set_rng_state(rng[j])
                    with sync(h == len(halves) - 1 and j == len(pieces) - 1):
                        with autocast(), _keep_less(model):
                            out = model(**{key: piece[key] for key in keys})
                        rng[j] = torch.get_rng_state()
                        value = self._slice_backward(out, all_img, all_txt, offset, n, term, i, first and h == 0,
                                                     k, world, backward)
                        del out   # this graph is gone: free its outputs before the next one is built
        scale = core.logit_scale.exp().clamp(max=100).item() if hasattr(core, "logit_scale") else None
        return {"loss": value, "logit_scale": scale}

    def _pieces(self, core: nn.Module, micro_batches: list[dict]) -> list[tuple[int, dict]]:
        """(micro-batch index, piece) in the order both passes run them: micro-batches cut into grad_chunk rows.

        The gradient pass holds the activations of one piece at a time, so smaller pieces lower the peak
        memory of accumulation (GradCache, Gao et al. 2021); the sum over pieces is the same gradient
        (dL/dtheta = sum over any partition of the rows). Cutting is exact only when a sample's features do
        not depend on the samples it runs with: BatchNorm in training mode (ModifiedResNet, torchvision
        trunks) normalises with the statistics of the batch it sees, so such models run whole
        micro-batches, as without the option. Randomness (dropout) is fine: both passes run the same
        pieces from the same recorded RNG states.
        """
        c = self.grad_chunk
        if not c or any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in core.modules()):
            return list(enumerate(micro_batches))
        return [(i, piece) for i, mb in enumerate(micro_batches) for piece in _cut(mb, c)]

    def _slice_backward(self, out, all_img, all_txt, offset, n, term, i, first, k, world, backward) -> float:
        """Back-propagate the loss with rows offset..offset+n live (out) and the rest the cached features.

        ``out`` may carry one tower's features only (the other's rows stay the cached ones). ``first``: this
        backward carries the temperature/bias gradient of its term. ``term``: the rows whose loss this is
        under the local loss (the live piece's micro-batch).
        """
        img, txt = _splice(all_img, out.get("image_features"), offset, n), _splice(all_txt, out.get("text_features"), offset, n)
        s, b = out["logit_scale"], out.get("logit_bias")
        if self.local_loss:
            # Local loss: only this micro-batch's rows; each micro-batch is its own term, averaged over k,
            # whose temperature/bias gradient its first piece carries.
            if not first:
                s, b = _scaled_grad(s, 0.0), _scaled_grad(b, 0.0)
            loss = self._loss(img, txt, s, b, term)
            if loss.requires_grad:   # not for the half of a locked tower without a trainable temperature
                backward(loss / k)
            return loss.detach().item()
        # Temperature/bias: value unchanged, gradient kept once (first piece of micro-batch 0) and divided
        # by world.
        g = (1.0 if i == 0 and first else 0.0) / world
        loss = self._loss(img, txt, _scaled_grad(s, g), _scaled_grad(b, g), None)
        if loss.requires_grad:
            backward(loss * world)   # DDP averages gradients over ranks; the full loss wants their sum
        return loss.detach().item()

    @torch.no_grad()
    def eval_loss(self, model, batch) -> float:
        return self.loss(model, batch)["loss"].item()

    def inference(self, model, batch):
        images = batch["image"]
        core = unwrap(model)
        return lambda: core.encode_image(images)
