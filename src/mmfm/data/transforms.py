"""Image preprocessing as CLIP does it, through torchvision transforms."""
from __future__ import annotations

from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from .base import to_rgb

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def image_transform(image_size: int, train: bool = False, mean=CLIP_MEAN, std=CLIP_STD,
                    scale: tuple[float, float] = (0.9, 1.0), hflip: bool = False, pad_crop: int = 0):
    """PIL image -> normalised tensor.

    Eval: bicubic resize of the short side to ``image_size``, centre crop, CLIP mean/std (OpenAI's recipe).
    Train: random resized crop over ``scale`` of the area (bicubic) by default; ``pad_crop=p`` switches
    to the CIFAR recipe (random crop with p pixels of padding) and ``hflip`` adds horizontal flips.
    """
    if train:
        if pad_crop:
            ops = [T.Resize(image_size, interpolation=InterpolationMode.BICUBIC), T.CenterCrop(image_size),
                   T.RandomCrop(image_size, padding=pad_crop)]
        else:
            ops = [T.RandomResizedCrop(image_size, scale=scale, interpolation=InterpolationMode.BICUBIC)]
        if hflip:
            ops.append(T.RandomHorizontalFlip())
    else:
        ops = [T.Resize(image_size, interpolation=InterpolationMode.BICUBIC), T.CenterCrop(image_size)]
    return T.Compose([to_rgb, *ops, T.ToTensor(), T.Normalize(mean, std)])
