"""Run under torchrun by test_trainer_no_output.py: only rank 0 trains an inner loop (``Trainer(out_dir=None)``),
as an evaluation run on the main rank during DDP training does (few-shot LoRA); the other rank waits at a
barrier. The inner loop must not take part in any collective, or both ranks hang."""
import sys

import torch
import torch.distributed as dist

from mmfm.api import create_model
from mmfm.train import TrainConfig, Trainer
from mmfm.train.distributed import init_distributed, shutdown_distributed


class Pairs(torch.utils.data.Dataset):
    def __init__(self):
        g = torch.Generator().manual_seed(5)
        self.images, self.texts = torch.randn(16, 3, 32, 32, generator=g), torch.randint(1, 1000, (16, 16), generator=g)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i], "text": self.texts[i]}


def main(out_path: str) -> None:
    info = init_distributed("cpu")
    loss = None
    if info.rank == 0:
        torch.manual_seed(0)
        model = create_model("ViT-tiny-test")
        cfg = TrainConfig(max_steps=3, batch_size=8, lr=1e-3, progress=False, tensorboard=False, seed=3)
        result = Trainer(model, Pairs(), cfg, None).fit()
        loss = result.final_loss
    if info.enabled:
        dist.barrier()
    if info.rank == 0:
        torch.save({"loss": loss}, out_path)
    if info.enabled:
        shutdown_distributed()


if __name__ == "__main__":
    main(sys.argv[1])
