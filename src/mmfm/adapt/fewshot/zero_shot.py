"""The baseline every few-shot method is compared with: the frozen CLIP's zero-shot classifier, no shots used."""
from __future__ import annotations

from .common import clip_scale, episode_features


def zero_shot_method(episode):
    """Zero-shot predictions with the task's prompt ensemble (the k-shot examples are ignored)."""
    f = episode_features(episode)
    return {"predictions": (clip_scale(episode.model) * f.test @ f.classifier).argmax(1).numpy(), "extra": {"trainable": 0}}
