"""Zero-shot classification of images against typed labels: what ``mmfm classify`` prints and ``mmfm serve``
draws, from one function, so the command and the web page give the same probabilities for the same image."""
from __future__ import annotations

from collections.abc import Sequence

import PIL.Image
import torch

from ..errors import UserError
from ..util.modes import eval_mode


def parse_labels(text: str) -> list[str]:
    """Comma-separated labels, each its own prompt; at least two (a softmax over one label says nothing)."""
    labels = [s.strip() for s in text.split(",") if s.strip()]
    if len(labels) < 2:
        raise UserError(f"labels {text!r}: give at least two comma-separated labels, e.g. \"a cat, a dog\"")
    return labels


def label_weights(model: torch.nn.Module, classnames: Sequence[str], templates: Sequence[str] = ("{}",)) -> torch.Tensor:
    """The zero-shot head [D, C] of zero-shot evaluation (each label as its own prompt by default)."""
    from ..eval.zero_shot import build_zero_shot_classifier
    # Not cached: typed labels are one-off, and a cache entry per request would grow without bound.
    with eval_mode(model):
        return build_zero_shot_classifier(model, list(classnames), list(templates), use_cache=False)


@torch.inference_mode()
def label_probabilities(model: torch.nn.Module, images: Sequence[PIL.Image.Image], weights: torch.Tensor) -> torch.Tensor:
    """Softmax over the labels [N, C] of CLIP's temperature times cosine(image, label), per RGB image."""
    from ..data.transforms import image_transform
    tf = image_transform(model.image_size)
    with eval_mode(model):
        pixels = torch.stack([tf(img) for img in images]).to(next(model.parameters()).device)
        emb = model.encode_image(pixels, normalize=True).float().cpu()
        return (model.scale().float().cpu() * emb @ weights).softmax(dim=-1)
