"""Run under torchrun by test_distributed.py: a few Trainer steps on pairs where one image is unreadable."""
import sys

import torch

from mmfm.data import collate_skip_none
from mmfm.api import create_model
from mmfm.train import TrainConfig, Trainer
from mmfm.train.distributed import init_distributed, shutdown_distributed


class PairsWithCorrupt(torch.utils.data.Dataset):
    """16 fixed pairs; item ``corrupt`` is unreadable (None, as ImageTextView returns for a bad file)."""

    def __init__(self, corrupt: int):
        g = torch.Generator().manual_seed(5)
        self.images, self.texts = torch.randn(16, 3, 32, 32, generator=g), torch.randint(1, 1000, (16, 16), generator=g)
        self.corrupt = corrupt

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return None if i == self.corrupt else {"image": self.images[i], "text": self.texts[i]}


def main(out_path: str, global_batch: int, steps: int, corrupt: int, accum: int) -> None:
    info = init_distributed("cpu")
    torch.manual_seed(0)
    model = create_model("ViT-tiny-test")
    cfg = TrainConfig(max_steps=steps, batch_size=global_batch // info.world_size // accum, accum_steps=accum,
                      lr=1e-3, log_every=1, progress=False, tensorboard=False, seed=3, grad_clip=None)
    result = Trainer(model, PairsWithCorrupt(corrupt), cfg, f"{out_path}.run", collate_fn=collate_skip_none).fit()
    if info.rank == 0:
        torch.save({"model": model.state_dict(), "skipped": result.skipped_samples,
                    "samples_seen": result.samples_seen, "loss": result.final_loss}, out_path)
    if info.enabled:
        shutdown_distributed()


if __name__ == "__main__":
    main(sys.argv[1], *map(int, sys.argv[2:]))
