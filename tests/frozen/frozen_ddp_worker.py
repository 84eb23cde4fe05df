"""Run under torchrun by test_frozen_training.py: Frozen's objective and Trainer under DDP (gloo, CPU).

Part 1: one forward/backward of a fixed global batch split over the ranks (and, with accum > 1, into
micro-batches); the loss and the gradients are saved by rank 0. Part 2: two Trainer steps with DDP and
accumulation; rank 0 saves whether the LM stayed bit-identical and how many steps ran.
"""
import sys
from contextlib import nullcontext

import torch
import torch.distributed as dist

from mmfm.api import create_model
from mmfm.train import TrainConfig, Trainer
from mmfm.train.distributed import init_distributed, shutdown_distributed
from mmfm.train.objectives import split_batch
from mmfm.frozen.objective import FrozenObjective


def global_batch(n: int, seq: int = 10):
    g = torch.Generator().manual_seed(1)
    lengths = torch.tensor([3, 9, 5, 10, 2, 7, 4, 8])[:n]       # very unequal caption lengths
    mask = (torch.arange(seq)[None] < lengths[:, None]).long()
    return {"image": torch.randn(n, 3, 32, 32, generator=g),
            "input_ids": torch.randint(1, 60, (n, seq), generator=g) * mask, "attention_mask": mask}


class Items(torch.utils.data.Dataset):
    def __init__(self, n=16):
        self.batch = global_batch(8)
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        b = self.batch
        return {"image": b["image"][i % 8], "text": b["input_ids"][i % 8], "attention_mask": b["attention_mask"][i % 8],
                "index": i}


def main(out_path: str, per_rank: int, accum: int) -> None:
    info = init_distributed("cpu")
    torch.manual_seed(0)
    model = create_model("frozen-tiny-test").eval()     # eval: BatchNorm's running stats, same on every split
    objective = FrozenObjective(pad_id=0, eos_id=None)
    batch = global_batch(per_rank * info.world_size)
    mine = {k: v[info.rank * per_rank:(info.rank + 1) * per_rank] for k, v in batch.items()}
    ddp = torch.nn.parallel.DistributedDataParallel(model) if info.enabled else model
    sync = (lambda last: nullcontext() if last else ddp.no_sync()) if info.enabled else (lambda last: nullcontext())
    out = objective.forward_backward(ddp, split_batch(mine, accum), lambda l: l.backward(), nullcontext, sync)
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    loss = torch.tensor(out["loss"], dtype=torch.float64)
    if info.enabled:   # the objective reports this rank's token mean; the global one weights ranks by tokens
        tokens = torch.tensor(float(mine["attention_mask"].sum()), dtype=torch.float64)
        pair = torch.stack([loss * tokens, tokens])
        dist.all_reduce(pair)
        loss = pair[0] / pair[1]

    torch.manual_seed(0)
    fresh = create_model("frozen-tiny-test")
    lm_before = {n: p.detach().clone() for n, p in fresh.lm.named_parameters()}
    cfg = TrainConfig(max_steps=2, batch_size=4, accum_steps=2, lr=1e-3, warmup_steps=0, device="cpu",
                      progress=False, tensorboard=False, log_every=1, seed=0)
    result = Trainer(fresh, Items(), cfg, out_path + ".run", objective=objective).fit()
    lm_same = all(torch.equal(p, lm_before[n]) and p.grad is None for n, p in fresh.lm.named_parameters())
    if info.rank == 0:
        torch.save({"loss": loss, "grads": grads, "trainer_steps": torch.tensor(result.steps),
                    "lm_unchanged": torch.tensor(lm_same)}, out_path)
    if info.enabled:
        del ddp, sync   # see shutdown_distributed: no DDP wrapper may outlive the process group
        shutdown_distributed()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
