"""The generative evaluation kinds of ``mmfm run`` / :func:`mmfm.evaluate.evaluate`: ``captioning`` on any
caption dataset and ``vqa`` on a dataset that provides questions and answers (today: ``shapes``).

Both take a Frozen model; its tokenizer comes from its config (``tokenizer``, else ``pretrained_lm``), which
``mmfm run`` fills in from a model's ``tokenizer:``. Decoding is greedy unless ``strategy`` says otherwise,
and what was used is recorded in the result's config.
"""
from __future__ import annotations

from collections.abc import Sequence

from ..eval.generation_results import CaptioningResult, VQAResult
from .family import is_frozen, tokenizer_for
from .tasks import ATTRIBUTE_QUESTIONS, evaluate_vqa

VQA_DATASETS = ("shapes",)   # datasets whose samples carry questions and answers (``dataset.scene`` + ``questions``)


def _check_model(model, kind: str) -> None:
    if not is_frozen(model):
        raise ValueError(f"evaluation {kind} needs a Frozen model (it generates text); this is a "
                         f"{getattr(getattr(model, 'config', None), 'family', type(model).__name__)!r} model")


def _name(dataset) -> str:
    return str(getattr(dataset, "name", "") or type(dataset).__name__)


def captioning(model, dataset, *, n: int = 200, max_new_tokens: int = 24, strategy: str = "greedy",
               batch_size: int = 64, model_name: str | None = None, progress: bool = True) -> CaptioningResult:
    """Captions of the first ``n`` images of ``dataset``; BLEU-1..4 and CIDEr-D against all of each image's
    captions (:func:`mmfm.eval.captioning.caption_metrics`)."""
    from ..eval.captioning import caption_metrics
    from .generate import generate
    _check_model(model, "captioning")
    if n < 1:
        raise ValueError(f"captioning: n must be >= 1, got {n}")
    tok = tokenizer_for(model)
    count = min(n, len(dataset))
    references = [[c for c in dataset.get_captions(i) if c] for i in range(count)]
    empty = [i for i, r in enumerate(references) if not r]
    if empty:
        raise ValueError(f"captioning: {_name(dataset)} has no captions for image(s) {empty[:5]}; captioning needs "
                         f"a caption dataset (shapes, a CSV/JSONL folder with captions, shards, flickr30k, ...)")
    images = [dataset[i].image for i in range(count)]
    captions = generate(model, tok, [[img] for img in images], strategy=strategy, max_new_tokens=max_new_tokens,
                        batch_size=batch_size)
    return CaptioningResult(model=model_name or type(model).__name__, dataset=_name(dataset),
                            metrics=caption_metrics(captions, references), num_images=count,
                            examples=[{"index": i, "caption": c, "references": r}
                                      for i, (c, r) in enumerate(zip(captions[:20], references))],
                            config={"n": count, "strategy": strategy, "max_new_tokens": max_new_tokens})


def supports_vqa(dataset) -> bool:
    return callable(getattr(dataset, "scene", None)) and callable(getattr(dataset, "questions", None))


def vqa(model, dataset, *, n: int = 200, questions: Sequence[str] = ATTRIBUTE_QUESTIONS, max_new_tokens: int = 4,
        model_name: str | None = None, progress: bool = True) -> VQAResult:
    """Open-ended answers to ``questions`` about the first ``n`` images (greedy, first word), VQAv2 accuracy,
    next to the majority-answer baseline counted on the same images."""
    _check_model(model, "vqa")
    if not supports_vqa(dataset):
        raise ValueError(f"evaluation vqa: dataset {_name(dataset)!r} provides no questions and answers; datasets "
                         f"that do: {list(VQA_DATASETS)} (use `captioning` for caption-only data)")
    r = evaluate_vqa(model, tokenizer_for(model), dataset, None, n, tuple(questions), max_new_tokens=max_new_tokens)
    return VQAResult(model=model_name or type(model).__name__, dataset=_name(dataset), accuracy=r["accuracy"],
                     majority_baseline=r["majority_baseline"], per_question=r["per_question"],
                     per_question_majority_baseline=r["per_question_majority_baseline"],
                     num_questions=r["n_questions"], examples=r["examples"],
                     config={"n": min(n, len(dataset)), "questions": list(questions), "strategy": "greedy",
                             "max_new_tokens": max_new_tokens, "baseline_answers": "the evaluated images"})
