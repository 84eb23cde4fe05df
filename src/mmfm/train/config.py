"""Training hyper-parameters, validated by pydantic: unknown keys and wrong types are clear errors."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TrainConfig(Strict):
    epochs: float = Field(1.0, gt=0, description="epochs to train (fractions allowed)")
    max_steps: int | None = Field(None, gt=0, description="stop after this many optimizer steps (overrides epochs)")
    batch_size: int = Field(64, gt=0, description="micro-batch size per process")
    accum_steps: int = Field(1, ge=1, description="micro-batches per optimizer step")
    lr: float = Field(5e-4, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    weight_decay_on: Literal["matrices", "all"] = Field(
        "matrices", description="which parameters weight decay applies to: 'matrices' (not gains, biases, "
                                "embeddings, temperature; CLIP's recipe) or 'all' (a plain AdamW over every parameter)")
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup_steps: int = Field(0, ge=0)
    schedule: Literal["cosine", "cosine_whole", "constant"] = Field(
        "cosine", description="cosine: warmup, then a cosine over the remaining steps; cosine_whole: one cosine "
                              "over all steps from step 0, multiplied by the warmup ramp while it lasts")
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    grad_clip: float | None = Field(1.0, gt=0)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    grad_checkpointing: bool = False
    grad_chunk: int | None = Field(None, ge=1, description="contrastive accumulation: run each micro-batch's feature "
                                   "and gradient passes in pieces of this many pairs (less activation memory, same "
                                   "gradients up to float summation order, slower; ViT-B-32 8 x accum 4 peaks at the "
                                   "end-of-pass gradients, which pieces do not lower; models with BatchNorm run whole "
                                   "micro-batches); null (default): whole micro-batches")
    compile: bool = False
    loss: Literal["clip", "siglip"] = "clip"
    local_loss: bool = False
    freeze: list[str] = Field(default_factory=list, description="parameter-name prefixes to freeze, e.g. ['visual', 'text.transformer.blocks.0']")
    lock_image: int | None = Field(None, ge=0, description="lock the image tower leaving this many last groups trainable")
    lock_text: int | None = Field(None, ge=0, description="lock the text tower leaving this many last groups trainable")
    seed: int = 0
    num_workers: int = Field(0, ge=0)
    device: str | None = None
    log_every: int = Field(10, gt=0)
    eval_every: int | None = Field(None, gt=0, description="validation every N steps (and always at the end)")
    ckpt_every: int | None = Field(None, gt=0, description="checkpoint every N steps (and always at the end)")
    keep_last: int = Field(2, ge=1)
    resume: bool = True
    progress: bool = True
    tensorboard: bool = True
