"""Result types of the generative evaluations (a Frozen model writing text): captioning and VQA.

They are :class:`~mmfm.eval.results.EvalResult` s like the embedding evaluations', so reports, comparison
tables and ``results.json`` treat them alike. Headlines: CIDEr-D and BLEU-4 for captioning (shown x100, as
captioning papers do), VQA accuracy for VQA (next to the blind majority-answer baseline).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..report.tables import markdown_table
from .results import EvalResult


@dataclass
class CaptioningResult(EvalResult):
    """Generated captions scored against each image's reference captions (``mmfm.eval.captioning``)."""

    kind: ClassVar[str] = "captioning"
    metrics: dict[str, float] = field(default_factory=dict)     # BLEU-1..4, CIDEr-D
    num_images: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def title(self) -> str:
        return f"Captioning: {self.model} on {self.dataset}"

    def headline(self):
        return {k: self.metrics.get(k) for k in ("CIDEr-D", "BLEU-4")}

    def _details(self):
        return {"metrics": self.metrics, "num_images": self.num_images, "examples": self.examples}

    def _markdown_extra(self):
        rows = [[e["caption"], " / ".join(e["references"][:2])] for e in self.examples[:8]]
        metrics = ", ".join(f"{k} {100 * v:.1f}" for k, v in self.metrics.items())
        return (f"{self.num_images} images, {self.config.get('strategy', 'greedy')} decoding; {metrics} (x100).\n\n"
                + markdown_table(["generated", "references"], rows))


@dataclass
class VQAResult(EvalResult):
    """Open-ended answers scored with VQAv2 accuracy (``mmfm.eval.vqa``), per question and overall."""

    kind: ClassVar[str] = "vqa"
    accuracy: float = float("nan")
    majority_baseline: float = float("nan")     # the most frequent answer of each question: a model ignoring the image
    per_question: dict[str, float] = field(default_factory=dict)
    per_question_majority_baseline: dict[str, float] = field(default_factory=dict)
    num_questions: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def title(self) -> str:
        return f"VQA: {self.model} on {self.dataset}"

    def headline(self):
        return {"accuracy": self.accuracy}

    def _details(self):
        return {"accuracy": self.accuracy, "majority_baseline": self.majority_baseline,
                "per_question": self.per_question, "per_question_majority_baseline": self.per_question_majority_baseline,
                "num_questions": self.num_questions, "examples": self.examples}

    def _markdown_extra(self):
        rows = [[q, f"{100 * a:.1f}", f"{100 * self.per_question_majority_baseline.get(q, float('nan')):.1f}"]
                for q, a in self.per_question.items()]
        return (f"{self.num_questions} questions; majority-answer baseline {100 * self.majority_baseline:.1f}% "
                f"(answers counted on {self.config.get('baseline_answers', 'the evaluated set')}).\n\n"
                + markdown_table(["question", "accuracy %", "majority baseline %"], rows, align="lrr"))
