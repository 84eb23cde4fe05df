"""Run under torchrun by test_stream_resume.py: Trainer steps on WebDataset shards split over the ranks."""
import sys

import torch
import torch.distributed as dist

from mmfm.data import ShardDataset
from mmfm.api import create_model
from mmfm.train import TrainConfig, Trainer
from mmfm.train.distributed import init_distributed, shutdown_distributed
from test_stream_resume import Tokenize


def main(out_path: str, shards: str, steps: int) -> None:
    info = init_distributed("cpu")
    torch.manual_seed(0)
    stream = ShardDataset(shards).with_transforms(None, Tokenize())
    cfg = TrainConfig(max_steps=steps, batch_size=2, log_every=1, progress=False, tensorboard=False)
    try:
        result = Trainer(create_model("ViT-tiny-test"), stream, cfg, f"{out_path}.run").fit()
        mine = {"epochs": result.epochs, "steps": result.steps, "error": None}
    except ValueError as e:
        mine = {"epochs": None, "steps": None, "error": str(e)}
    everyone = [None] * info.world_size
    dist.all_gather_object(everyone, mine)
    if info.rank == 0:
        torch.save({"epochs": [m["epochs"] for m in everyone], "steps": [m["steps"] for m in everyone],
                    "errors": [m["error"] for m in everyone]}, out_path)
    shutdown_distributed()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
