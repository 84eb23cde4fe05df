"""The training engine: losses, objectives, optimizer/schedule, trainer, checkpoints, distributed."""
from .checkpointing import atomic_torch_save, latest_valid_checkpoint, list_checkpoints, load_checkpoint
from .config import TrainConfig
from .distributed import dist_info, init_distributed
from .losses import clip_loss, siglip_loss
from .objectives import ContrastiveObjective, Objective, split_batch, unwrap
from .sampler import ResumableBatchSampler, SeededItems
from .schedule import build_optimizer, build_scheduler
from .trainer import Trainer, TrainingDiverged, TrainResult

__all__ = ["atomic_torch_save", "latest_valid_checkpoint", "list_checkpoints", "load_checkpoint", "TrainConfig",
           "dist_info", "init_distributed", "clip_loss", "siglip_loss", "ContrastiveObjective", "Objective",
           "split_batch", "unwrap", "ResumableBatchSampler", "SeededItems", "build_optimizer", "build_scheduler",
           "Trainer", "TrainingDiverged", "TrainResult"]
