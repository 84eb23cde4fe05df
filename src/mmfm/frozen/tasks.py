"""Frozen on ``shapes``: a captioning(+VQA) training view and the evaluations behind the ``vqa`` and ``binding``
kinds (:mod:`.evals`), as run by experiments/frozen_shapes.

* ``evaluate_captioning``: greedy captions of held-out images, BLEU-1..4 / CIDEr-D against all their captions;
* ``evaluate_vqa``: open-ended answers to attribute questions (shape, colour), VQAv2 accuracy, next to
  the majority-answer baseline of each question (what a model that ignores the image would get);
* ``evaluate_binding``: fast concept binding with new words, the paper's miniImageNet-style task:
  ``[img_a] This is a dax. [img_b] This is a blicket. [img_q] Q: What is this? A:`` (template "paper") or
  ``[img_a] dax. [img_b] blicket. [img_q]`` (template "direct", see ``mmfm.data.shapes_text.BINDING_TEMPLATES``) where
  ``img_q`` is another image of the shape of ``img_a`` or ``img_b``; chance is 50%. Scored open-ended (the greedy
  answer's first word) and forced-choice (which of the two words is more likely).
"""
from __future__ import annotations

import random
from collections import Counter
from typing import Any, Callable, Sequence

import torch
from torch.utils.data import Dataset

from ..data.pipeline import caption_rng
from ..data.shapes import Shapes, questions
from ..models.frozen import IGNORE_INDEX
from ..data.shapes_text import VQA_TEMPLATE, binding_template, description
from .generate import generate, score_continuations
from .text import FrozenTokenizer

ATTRIBUTE_QUESTIONS = ("what shape is this?", "what colour is it?")


class CaptionVQAView(Dataset):
    """Training items ``{"image", "text", "labels", "index"}``: a caption target, or with probability
    ``vqa_fraction`` a "Q: ... A: answer" target whose loss covers only the answer. With
    ``prefix_targets=n`` also ``"prefix_targets"``: the last ``n`` tokens of the image's description.

    Draws come from ``(seed, epoch, index)`` like ``ImageTextView``'s captions, so resumed runs match.
    With ``vqa_fraction=0`` it is equivalent to ``ImageTextView`` plus explicit labels.
    """

    def __init__(self, dataset: Shapes, image_transform: Callable, tokenizer: FrozenTokenizer,
                 vqa_fraction: float = 0.0, seed: int = 0, vqa_questions: Sequence[str] | None = None,
                 prefix_targets: int = 0):
        if not 0.0 <= vqa_fraction <= 1.0:
            raise ValueError(f"vqa_fraction must be in [0, 1], got {vqa_fraction}")
        self.dataset, self.transform, self.tokenizer = dataset, image_transform, tokenizer
        self.vqa_fraction, self.seed, self.epoch = vqa_fraction, seed, 0
        self.vqa_questions = set(vqa_questions) if vqa_questions else None
        self.prefix_targets = prefix_targets

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        rng = caption_rng(self.seed, self.epoch, index)
        sample = self.dataset[index]
        qa = [(q, a) for q, a in questions(sample) if self.vqa_questions is None or q in self.vqa_questions]
        if qa and rng.random() < self.vqa_fraction:
            q, a = rng.choice(qa)
            ids, labels = self.tokenizer.encode_pair(VQA_TEMPLATE.format(q), a)
        else:
            ids = self.tokenizer([rng.choice(sample.captions)])[0]
            labels = ids.masked_fill(self.tokenizer.attention_mask(ids) == 0, IGNORE_INDEX)
        item = {"image": self.transform(sample.image), "text": ids, "labels": labels, "index": index}
        if self.prefix_targets:
            item["prefix_targets"] = description_ids(self.tokenizer, self.dataset.scene(index), self.prefix_targets)
        return item


def description_ids(tokenizer: FrozenTokenizer, scene, n: int) -> torch.Tensor:
    """The last ``n`` token ids of the scene's description ("... large red circle"): the words a visual
    prefix of length ``n`` is asked to sit on (``prefix_targets``), ending, like the description, on the shape."""
    ids = tokenizer.encode(description(scene))
    if len(ids) < n:
        raise ValueError(f"a description has {len(ids)} tokens, fewer than the {n} prefix targets asked for")
    return torch.tensor(ids[-n:], dtype=torch.long)


def _shown(dataset: Shapes, index: int, as_text: bool):
    """What stands for image ``index`` in a prompt: the image, or (``as_text``) its textual description,
    which probes the frozen LM alone on the same task."""
    return description(dataset.scene(index)) if as_text else dataset[index].image


def first_word(text: str) -> str:
    words = text.strip().lower().replace(".", " ").replace(",", " ").split()
    return words[0] if words else ""


# ------------------------------------------------------------------------------------------
def evaluate_captioning(model, tokenizer: FrozenTokenizer, dataset: Shapes, n: int = 200, **gen) -> dict[str, Any]:
    """Greedy (or ``gen``) captions of the first ``n`` images; metrics against all of each image's captions."""
    from ..eval.captioning import caption_metrics
    n = min(n, len(dataset))
    samples = [dataset[i] for i in range(n)]
    gen.setdefault("max_new_tokens", 24)
    captions = generate(model, tokenizer, [[s.image] for s in samples], **gen)
    metrics = caption_metrics(captions, [s.captions for s in samples])
    return {"metrics": metrics, "n_images": n,
            "examples": [{"index": i, "caption": c, "references": s.captions}
                         for i, (c, s) in enumerate(zip(captions, samples))]}


def majority_answers(dataset: Shapes, question_set: Sequence[str], n: int = 2000) -> dict[str, str]:
    """Most frequent training answer of each question: the "blind" baseline's prediction."""
    counts: dict[str, Counter] = {q: Counter() for q in question_set}
    for i in range(min(n, len(dataset))):
        for q, a in questions(dataset.scene(i)):
            if q in counts:
                counts[q][a] += 1
    return {q: (c.most_common(1)[0][0] if c else "") for q, c in counts.items()}


def evaluate_vqa(model, tokenizer: FrozenTokenizer, dataset: Shapes, train_dataset: Shapes | None = None,
                 n: int = 200, question_set: Sequence[str] = ATTRIBUTE_QUESTIONS, as_text: bool = False,
                 **gen) -> dict[str, Any]:
    """Open-ended VQA on the first ``n`` images of ``dataset``, per question and overall, with baseline.

    ``as_text``: each image replaced by its description, i.e. the frozen LM's own skill at the task.
    """
    from ..eval.vqa import vqa_accuracy
    n = min(n, len(dataset))
    items = []
    for i in range(n):
        shown = _shown(dataset, i, as_text)
        for q, a in questions(dataset.scene(i)):
            if q in question_set:
                items.append((shown, q, a))
    gen.setdefault("max_new_tokens", 4)
    preds = generate(model, tokenizer, [[img, VQA_TEMPLATE.format(q)] for img, q, _ in items], **gen)
    preds = [first_word(p) if p else "" for p in preds]
    majority = majority_answers(train_dataset or dataset, question_set)
    per_question, baseline = {}, {}
    for q in question_set:
        idx = [k for k, it in enumerate(items) if it[1] == q]
        if idx:
            per_question[q] = vqa_accuracy([preds[k] for k in idx], [[items[k][2]] for k in idx])
            baseline[q] = vqa_accuracy([majority[q]] * len(idx), [[items[k][2]] for k in idx])
    return {"accuracy": vqa_accuracy(preds, [[it[2]] for it in items]),
            "majority_baseline": vqa_accuracy([majority[it[1]] for it in items], [[it[2]] for it in items]),
            "per_question": per_question, "per_question_majority_baseline": baseline, "n_questions": len(items),
            "majority_answers": majority,
            "examples": [{"question": q, "answer": a, "prediction": p} for (_, q, a), p in zip(items[:12], preds)]}


def binding_episodes(dataset: Shapes, n: int, words: Sequence[str] = ("dax", "blicket"), seed: int = 0) -> list[dict]:
    """``n`` two-way episodes: two support images of different shapes, each named with a new word, and a
    query image (a different image) of one of the two shapes. Word order and assignment are random."""
    rng = random.Random(f"binding/{seed}")
    by_shape: dict[int, list[int]] = {}
    for i in range(len(dataset)):
        by_shape.setdefault(dataset.scene(i).objects[0].shape, []).append(i)
    shapes = sorted(s for s, idx in by_shape.items() if len(idx) >= 2)   # a support and a different query
    if len(shapes) < 2:
        raise ValueError("concept binding needs at least two shapes with two images each in the dataset")
    episodes = []
    for _ in range(n):
        pair = rng.sample(shapes, 2)
        names = rng.sample(list(words), 2)
        target = rng.randrange(2)
        supports = [rng.choice(by_shape[s]) for s in pair]
        query = rng.choice([i for i in by_shape[pair[target]] if i != supports[target]])
        episodes.append({"supports": supports, "words": names, "query": query, "answer": names[target],
                         "shapes": [dataset.classes[s] for s in pair]})
    return episodes


def binding_prompt(dataset: Shapes, episode: dict, as_text: bool = False, template: str = "paper") -> list:
    statement, question = binding_template(template)
    parts: list = []
    for index, word in zip(episode["supports"], episode["words"]):
        parts += [_shown(dataset, index, as_text), statement.format(word)]
    return parts + [_shown(dataset, episode["query"], as_text)] + ([question] if question else [])


def evaluate_binding(model, tokenizer: FrozenTokenizer, dataset: Shapes, n: int = 200,
                     words: Sequence[str] = ("dax", "blicket"), seed: int = 0, as_text: bool = False,
                     template: str = "paper", **gen) -> dict[str, Any]:
    """Few-shot binding accuracy, open-ended and forced-choice, against 50% chance (``as_text``: see VQA)."""
    episodes = binding_episodes(dataset, n, words, seed)
    prompts = [binding_prompt(dataset, e, as_text, template) for e in episodes]
    gen.setdefault("max_new_tokens", 3)
    answers = generate(model, tokenizer, prompts, **gen)
    open_ended = [first_word(a) == e["answer"] for a, e in zip(answers, episodes)]
    scores = score_continuations(model, tokenizer, prompts, [e["words"] for e in episodes])
    chosen = [e["words"][int(torch.argmax(s[:2]))] for s, e in zip(scores, episodes)]
    forced = [c == e["answer"] for c, e in zip(chosen, episodes)]
    return {"open_ended_accuracy": sum(open_ended) / len(episodes), "forced_choice_accuracy": sum(forced) / len(episodes),
            "chance": 0.5, "n_episodes": len(episodes), "words": list(words), "template": template,
            "answered_a_new_word": sum(first_word(a) in words for a in answers) / len(episodes),
            "examples": [{**e, "generated": a} for e, a in zip(episodes[:8], answers)]}
