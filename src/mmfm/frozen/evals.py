"""The generative evaluation kinds of ``mmfm run`` / :func:`mmfm.evaluate.evaluate`: ``captioning`` on any
caption dataset, ``vqa`` on a dataset that provides questions and answers (today: ``shapes``) and ``binding``
(few-shot binding of new words to shapes, the paper's miniImageNet-style task, on ``shapes``).

All take a Frozen model; its tokenizer comes from its config (``tokenizer``, else ``pretrained_lm``), which
``mmfm run`` fills in from a model's ``tokenizer:``. Decoding is greedy unless ``strategy`` says otherwise,
and what was used is recorded in the result's config. Baselines: captioning's blind constant caption (the
training set's most frequent caption, ``blind_baseline``), VQA's majority answer (counted on the evaluated
images or the training set, ``majority_from``), binding's chance; ``as_text`` (VQA, binding) gives the frozen
LM each image's description instead of the image: what the LM alone can do, the ceiling of Frozen.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from ..eval.generation_results import CaptioningResult, VQAResult
from ..eval.results import EvalResult
from ..report.tables import markdown_table
from .family import is_frozen, tokenizer_for
from .tasks import ATTRIBUTE_QUESTIONS, evaluate_binding, evaluate_vqa

VQA_DATASETS = ("shapes",)   # datasets whose samples carry questions and answers (``dataset.scene`` + ``questions``)


def _check_model(model, kind: str) -> None:
    if not is_frozen(model):
        raise ValueError(f"evaluation {kind} needs a Frozen model (it generates text); this is a "
                         f"{getattr(getattr(model, 'config', None), 'family', type(model).__name__)!r} model")


def _name(dataset) -> str:
    return str(getattr(dataset, "name", "") or type(dataset).__name__)


def most_common_caption(dataset, n: int = 2000) -> str:
    """The most frequent caption of the first ``n`` images: what a model that ignores the image would say."""
    counts = Counter(c for i in range(min(n, len(dataset))) for c in dataset.get_captions(i))
    return counts.most_common(1)[0][0]


def captioning(model, dataset, *, n: int = 200, max_new_tokens: int = 24, strategy: str = "greedy",
               batch_size: int = 64, model_name: str | None = None, progress: bool = True,
               blind_baseline: bool = False, train_dataset=None) -> CaptioningResult:
    """Captions of the first ``n`` images of ``dataset``; BLEU-1..4 and CIDEr-D against all of each image's
    captions (:func:`mmfm.eval.captioning.caption_metrics`). ``blind_baseline``: also the same metrics of one
    constant caption, the training set's most frequent (``config["blind_baseline"]``)."""
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
    config: dict[str, Any] = {"n": count, "strategy": strategy, "max_new_tokens": max_new_tokens}
    if blind_baseline:
        if train_dataset is None:
            raise ValueError("captioning: blind_baseline needs the training data (the evaluation's train_dataset)")
        blind = most_common_caption(train_dataset)
        config["blind_baseline"] = {"caption": blind, **caption_metrics([blind] * count, references)}
    return CaptioningResult(model=model_name or type(model).__name__, dataset=_name(dataset),
                            metrics=caption_metrics(captions, references), num_images=count,
                            examples=[{"index": i, "caption": c, "references": r}
                                      for i, (c, r) in enumerate(zip(captions[:20], references))],
                            config=config)


def supports_vqa(dataset) -> bool:
    return callable(getattr(dataset, "scene", None)) and callable(getattr(dataset, "questions", None))


def vqa(model, dataset, *, n: int = 200, questions: Sequence[str] = ATTRIBUTE_QUESTIONS, max_new_tokens: int = 4,
        model_name: str | None = None, progress: bool = True, as_text: bool = False,
        majority_from: Literal["evaluated", "train"] = "evaluated", train_dataset=None) -> VQAResult:
    """Open-ended answers to ``questions`` about the first ``n`` images (greedy, first word), VQAv2 accuracy,
    next to the majority-answer baseline counted on the same images (``majority_from="train"``: on the
    training set's). ``as_text``: each image replaced by its description (the LM alone)."""
    _check_model(model, "vqa")
    if not supports_vqa(dataset):
        raise ValueError(f"evaluation vqa: dataset {_name(dataset)!r} provides no questions and answers; datasets "
                         f"that do: {list(VQA_DATASETS)} (use `captioning` for caption-only data)")
    if majority_from not in ("evaluated", "train"):
        raise ValueError(f"vqa: majority_from must be 'evaluated' or 'train', got {majority_from!r}")
    if majority_from == "train" and train_dataset is None:
        raise ValueError("vqa: majority_from 'train' needs the training data (the evaluation's train_dataset)")
    baseline_data = train_dataset if majority_from == "train" else None
    r = evaluate_vqa(model, tokenizer_for(model), dataset, baseline_data, n, tuple(questions), as_text=as_text,
                     max_new_tokens=max_new_tokens)
    return VQAResult(model=model_name or type(model).__name__, dataset=_name(dataset), accuracy=r["accuracy"],
                     majority_baseline=r["majority_baseline"], per_question=r["per_question"],
                     per_question_majority_baseline=r["per_question_majority_baseline"],
                     num_questions=r["n_questions"], examples=r["examples"],
                     config={"n": min(n, len(dataset)), "questions": list(questions), "strategy": "greedy",
                             "max_new_tokens": max_new_tokens, "as_text": as_text,
                             "baseline_answers": "the training images" if baseline_data is not None
                             else "the evaluated images"})


@dataclass
class BindingResult(EvalResult):
    """Few-shot binding of new words: ``[img_a] dax. [img_b] blicket. [img_q]`` -> the word of ``img_q``'s shape,
    open-ended (the greedy answer's first word) and forced-choice (the likelier of the two words); chance 0.5."""

    kind: ClassVar[str] = "binding"
    open_ended_accuracy: float = float("nan")
    forced_choice_accuracy: float = float("nan")
    chance: float = 0.5
    answered_a_new_word: float = float("nan")
    n_episodes: int = 0
    words: list[str] = field(default_factory=list)
    template: str = "direct"
    examples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def title(self) -> str:
        return f"Few-shot binding: {self.model} on {self.dataset}"

    def headline(self):
        return {"open_ended": self.open_ended_accuracy, "forced_choice": self.forced_choice_accuracy}

    def _details(self):
        return {"open_ended_accuracy": self.open_ended_accuracy, "forced_choice_accuracy": self.forced_choice_accuracy,
                "chance": self.chance, "answered_a_new_word": self.answered_a_new_word,
                "n_episodes": self.n_episodes, "words": self.words, "template": self.template,
                "examples": self.examples}

    def _markdown_extra(self):
        rows = [[f"{e['shapes'][0]} = {e['words'][0]}, {e['shapes'][1]} = {e['words'][1]}", e["generated"], e["answer"]]
                for e in self.examples[:8]]
        return (f"{self.n_episodes} episodes with the new words {' / '.join(self.words)} ({self.template!r} template"
                f"{', images as descriptions' if self.config.get('as_text') else ''}); chance {self.chance:.2f}; "
                f"answered with one of them: {100 * self.answered_a_new_word:.1f}%.\n\n"
                + markdown_table(["supports", "generated", "truth"], rows))


def binding(model, dataset, *, n: int = 200, words: Sequence[str] = ("dax", "blicket"), seed: int = 0,
            template: str = "direct", as_text: bool = False, max_new_tokens: int = 3,
            model_name: str | None = None, progress: bool = True) -> BindingResult:
    """``n`` two-way binding episodes drawn from ``seed`` on ``dataset`` (shapes), written with ``template``
    (:data:`mmfm.data.shapes_text.BINDING_TEMPLATES`); ``as_text``: images replaced by their descriptions."""
    from ..data.shapes_text import binding_template
    _check_model(model, "binding")
    if not supports_vqa(dataset):
        raise ValueError(f"evaluation binding: dataset {_name(dataset)!r} has no scenes to bind words to; "
                         f"datasets that do: {list(VQA_DATASETS)}")
    if len(words) != 2 or len(set(words)) != 2:
        raise ValueError(f"binding: words must be two different words, got {list(words)}")
    binding_template(template)      # an unknown template fails here, naming the known ones
    r = evaluate_binding(model, tokenizer_for(model), dataset, n, words=tuple(words), seed=seed, as_text=as_text,
                         template=template, max_new_tokens=max_new_tokens)
    return BindingResult(model=model_name or type(model).__name__, dataset=_name(dataset),
                         open_ended_accuracy=r["open_ended_accuracy"], forced_choice_accuracy=r["forced_choice_accuracy"],
                         chance=r["chance"], answered_a_new_word=r["answered_a_new_word"], n_episodes=r["n_episodes"],
                         words=list(words), template=template, examples=r["examples"],
                         config={"n": n, "seed": seed, "template": template, "as_text": as_text,
                                 "max_new_tokens": max_new_tokens, "strategy": "greedy"})
