"""Zero-shot classification: classify images by comparing them with embedded class prompts.

The classifier is the CLIP paper's prompt ensemble, computed exactly as open_clip's
``build_zero_shot_classifier``: for each class, embed every template filled with the class name,
L2-normalise each embedding, average them, and L2-normalise the mean. An image is assigned the
class whose classifier column has the largest cosine similarity with its (normalised) embedding.

Classifiers are cached per (model weights, prompt texts, tokenizer): in memory always, and on disk
(safetensors) when a cache folder is given, since embedding e.g. 1000 classes x 80 templates costs
more than the evaluation of a small test set.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from ..util.weights import model_fingerprint
from .cache import FeatureCache, cache_key, get_cache
from .features import encode_texts, extract_image_features, get_text_tokenizer, model_device
from .results import skipped_names
from .results import ClassificationMetrics, ZeroShotResult, file_slug

Template = str | Callable[[str], str]


def fill_templates(classnames: Sequence[str], templates: Sequence[Template]) -> list[list[str]]:
    """``texts[c][t]``: template ``t`` filled with class ``c`` (``"{}"`` format strings or callables)."""
    if not templates:
        raise ValueError("at least one template is needed")
    if not classnames:
        raise ValueError("at least one class name is needed")
    return [[t.format(c) if isinstance(t, str) else t(c) for t in templates] for c in classnames]


def build_zero_shot_classifier(model: nn.Module, classnames: Sequence[str], templates: Sequence[Template], *,
                               tokenizer: Callable | None = None, device: str | torch.device | None = None,
                               num_classes_per_batch: int = 10, cache: FeatureCache | str | Path | None = None,
                               use_cache: bool = True, progress: bool = False) -> torch.Tensor:
    """Zero-shot classifier weights ``[D, C]`` (float32, CPU), one unit-norm column per class.

    Same orientation and math as ``open_clip.build_zero_shot_classifier``, so
    ``normalize(image_embeddings) @ W`` are cosine similarities (logits up to the temperature).
    """
    texts = fill_templates(classnames, templates)
    tok = get_text_tokenizer(model, tokenizer)
    # Keyed on the texts themselves (not the template objects), so callables and strings that
    # produce the same prompts share a classifier.
    key = cache_key("zeroshot-classifier", model_fingerprint(model), texts,
                getattr(tok, "context_length", None), type(tok).__name__)
    store = get_cache(cache)
    if use_cache:
        hit = store.get(key)
        if hit is not None:
            return hit.tensors["weights"]
    num_templates = len(texts[0])
    columns = []
    step = num_classes_per_batch or len(texts)
    from tqdm.auto import tqdm
    for start in tqdm(range(0, len(texts), step), desc="zero-shot classifier", disable=not progress, leave=False):
        chunk = texts[start:start + step]
        flat = [t for per_class in chunk for t in per_class]
        emb = encode_texts(model, flat, tokenizer=tok, batch_size=len(flat), device=device, normalize=True)
        emb = emb.reshape(len(chunk), num_templates, -1).mean(dim=1)
        columns.append(emb / emb.norm(dim=1, keepdim=True))
    weights = torch.cat(columns).T.contiguous()
    if use_cache:
        store.put(key, {"weights": weights}, metadata={"classes": len(classnames), "templates": num_templates})
    return weights


def resolve_task(dataset, task=None, classnames: Sequence[str] | None = None,
                 templates: Sequence[Template] | None = None):
    """The :class:`~mmfm.data.base.ZeroShotTask` to run.

    ``task``: a task object, a name from ``dataset.zero_shot_tasks()`` (e.g. ``"color"`` for shapes),
    or None for the dataset's first task. ``classnames`` / ``templates`` override the task's own
    (prompt-engineering experiments); with ``classnames`` and no task, the primary label is used.
    """
    from ..data.base import ZeroShotTask
    if isinstance(task, ZeroShotTask):
        chosen = task
    else:
        tasks = dataset.zero_shot_tasks() if hasattr(dataset, "zero_shot_tasks") else {}
        if isinstance(task, str):
            if task not in tasks:
                raise KeyError(f"{getattr(dataset, 'name', 'dataset')} has no zero-shot task {task!r}; "
                               f"available: {sorted(tasks)}")
            chosen = tasks[task]
        elif tasks:
            chosen = next(iter(tasks.values()))
        elif classnames is not None:
            chosen = ZeroShotTask("label", list(classnames), list(templates or ["a photo of a {}."]), None)
        else:
            raise ValueError(f"{getattr(dataset, 'name', 'dataset')} defines no zero-shot task and no classnames "
                             f"were given")
    if classnames is not None or templates is not None:
        chosen = ZeroShotTask(chosen.name, list(classnames if classnames is not None else chosen.classnames),
                              list(templates if templates is not None else chosen.templates), chosen.attribute)
    return chosen


def model_label(model: nn.Module, name: str | None = None) -> str:
    """How a model is named in results: ``name``, else ``model.name``, else class + weights hash."""
    if name:
        return name
    if getattr(model, "name", None):
        return str(model.name)
    return f"{type(model).__name__}-{model_fingerprint(model)[:8]}"


def zero_shot(model: nn.Module, dataset, *, task=None, classnames: Sequence[str] | None = None,
              templates: Sequence[Template] | None = None, model_name: str | None = None,
              batch_size: int = 64, num_workers: int = 0, device: str | torch.device | None = None,
              transform: Callable | None = None, tokenizer: Callable | None = None,
              cache: FeatureCache | str | Path | None = None, out_dir: str | Path | None = None,
              progress: bool = True) -> ZeroShotResult:
    """Zero-shot top-1/top-5, per-class accuracy and confusion matrix of ``model`` on ``dataset``.

    Samples without a label for the task are skipped (their number is in ``result.config``). With
    ``out_dir`` the confusion matrix is also written as a PNG.
    """
    zs_task = resolve_task(dataset, task, classnames, templates)
    device = torch.device(device) if device is not None else model_device(model)
    t0 = time.perf_counter()
    weights = build_zero_shot_classifier(model, zs_task.classnames, zs_task.templates, tokenizer=tokenizer,
                                         device=device, cache=cache, progress=progress)
    classifier_s = time.perf_counter() - t0
    feats = extract_image_features(model, dataset, kind="embedding", attribute=zs_task.attribute,
                                   batch_size=batch_size, num_workers=num_workers, device=device,
                                   transform=transform, cache=cache, progress=progress,
                                   desc=f"zero-shot {getattr(dataset, 'name', '')}")
    keep = feats.labels >= 0
    images = feats.features[keep]
    images = images / images.norm(dim=1, keepdim=True)
    scores = images @ weights   # cosine similarities; the temperature does not change rankings
    metrics = ClassificationMetrics.from_scores(scores, feats.labels[keep], zs_task.classnames)

    result = ZeroShotResult(
        model=model_label(model, model_name), dataset=getattr(dataset, "name", type(dataset).__name__),
        # Results name the task only when it is not the primary label (e.g. shapes' "color"), so
        # tables read "cifar10 zero-shot top1" rather than "cifar10/class ...".
        task=zs_task.name if zs_task.attribute is not None else None, perf=feats.perf, metrics=metrics,
        templates=[t if isinstance(t, str) else repr(t) for t in zs_task.templates],
        config={"task": zs_task.name, "num_classes": len(zs_task.classnames), "num_templates": len(zs_task.templates),
                "attribute": zs_task.attribute, "skipped_unlabelled": int((~keep).sum()) - len(feats.skipped),
                "skipped_images": skipped_names(feats),
                "classifier_s": classifier_s, "batch_size": batch_size})
    if out_dir is not None:
        from .plots import plot_confusion_matrix
        stem = file_slug("_".join(p for p in (result.model, result.dataset, result.task) if p))   # no "None" part
        path = Path(out_dir) / f"confusion_{stem}.png"
        plot_confusion_matrix(metrics.confusion, metrics.classnames, path, title=result.title)
        result.plots["confusion_matrix"] = str(path)
    return result
