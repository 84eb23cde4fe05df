"""Run as a subprocess by test_resume.py and test_faults.py: a small deterministic training run that
checkpoints often. ``MMFM_TEST_SLOW_SAVE=<seconds>`` makes every torch.save write half the file, pause,
then write the rest, so a test can kill the process in the middle of a checkpoint write."""
import io
import os
import sys
import time

import torch

from mmfm.api import create_model
from mmfm.train import TrainConfig, Trainer


class Synthetic(torch.utils.data.Dataset):
    """Random but fixed image/text pairs; an item draws augmentation noise from the torch RNG."""

    def __init__(self, n=64, delay=0.0):
        g = torch.Generator().manual_seed(123)
        self.images = torch.randn(n, 3, 32, 32, generator=g)
        self.texts = torch.randint(1, 1000, (n, 16), generator=g)
        self.delay = delay

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        if self.delay:
            time.sleep(self.delay)
        # "augmentation" from the global RNG: exact resume needs it seeded per (epoch, index)
        return {"image": self.images[i] + 0.1 * torch.randn(3, 32, 32), "text": self.texts[i]}


def slow_saves(pause: float) -> None:
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        buf = io.BytesIO()
        real_save(obj, buf, *args, **kwargs)
        data = buf.getvalue()
        with open(f, "wb") as out:
            out.write(data[: len(data) // 2])
            out.flush()
            time.sleep(pause)
            out.write(data[len(data) // 2:])
    torch.save = save


def main(out_dir: str, delay: float, steps: int, nan_at: int = 0) -> None:
    if os.environ.get("MMFM_TEST_SLOW_SAVE"):
        slow_saves(float(os.environ["MMFM_TEST_SLOW_SAVE"]))
    torch.manual_seed(0)
    model = create_model("ViT-tiny-test")
    if nan_at:
        seen = {"rows": 0}

        # Step `nan_at` produces NaN. Each step runs its 16 pairs through the image tower twice (the cached
        # no-grad pass and the gradient pass), however the passes cut them into pieces: count rows, not calls.
        def poison(module, inputs, output):
            seen["rows"] += output.shape[0]
            return output * float("nan") if seen["rows"] > (nan_at - 1) * 2 * 16 else output
        model.visual.register_forward_hook(poison)
    cfg = TrainConfig(max_steps=steps, batch_size=8, accum_steps=2, lr=1e-3, warmup_steps=2, ckpt_every=2,
                      keep_last=3, log_every=1, progress=False, tensorboard=False, seed=7)
    result = Trainer(model, Synthetic(delay=delay), cfg, out_dir).fit()
    print("final_loss", result.final_loss)


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]) if len(sys.argv) > 4 else 0)
