"""Run under torchrun by test_distributed.py: one DDP step of the contrastive objective, gradients saved."""
import sys
from contextlib import nullcontext

import torch

from mmfm.api import create_model
from mmfm.train.distributed import init_distributed, shutdown_distributed
from mmfm.train.objectives import ContrastiveObjective, split_batch


def main(out_path: str, per_rank: int, accum: int) -> None:
    info = init_distributed("cpu")
    torch.manual_seed(0)
    model = create_model("ViT-tiny-test")
    g = torch.Generator().manual_seed(1)
    images = torch.randn(per_rank * info.world_size, 3, 32, 32, generator=g)
    texts = torch.randint(1, 1000, (per_rank * info.world_size, 16), generator=g)
    sl = slice(info.rank * per_rank, (info.rank + 1) * per_rank)
    batch = {"image": images[sl], "text": texts[sl]}
    ddp = torch.nn.parallel.DistributedDataParallel(model) if info.enabled else model
    sync = (lambda last: nullcontext() if last else ddp.no_sync()) if info.enabled else (lambda last: nullcontext())
    out = ContrastiveObjective().forward_backward(ddp, split_batch(batch, accum), lambda l: l.backward(), nullcontext, sync)
    if info.rank == 0:
        torch.save({"loss": out["loss"], "grads": {n: p.grad for n, p in model.named_parameters()}}, out_path)
    if info.enabled:
        del ddp, sync   # see shutdown_distributed: no DDP wrapper may outlive the process group
        shutdown_distributed()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
