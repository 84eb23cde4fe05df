"""Text about ``shapes`` scenes, with no image: the corpus the Frozen experiment's small language model learns
from (dataset ``shapes_text``), and ``text_file``, documents of a user's own from a text or JSONL file.

Frozen's point is that a language model trained on text alone already knows how to answer questions
and to use a word it was just told; images only have to be translated into something it can read.
Here no pretrained LM is available, so a small one is trained on text written about ``shapes`` scenes,
in the same surface forms Frozen will later be prompted with, with each image replaced by a short
textual description of it (its attributes, "top left large red circle"):

* captions alone ........................... "a photo of a red circle"
* a description, then a caption ............ "top left large red circle a red circle at the top left"
* a description, a question, its answer .... "top left large red circle Q: What colour is it? A: red"
* concept binding with nonsense words ...... "<desc> dax. <desc> blicket. <desc> dax" (template "direct"),
  or in the paper's words: "<desc> This is a dax. <desc> This is a blicket. <desc> Q: What is this? A: dax"
* a random word sequence, repeated ......... "wug toma fep wug toma fep"

The nonsense words are drawn per document from a pool and bound at random, so the only way to predict
the answer is to copy the word that followed the description of the same shape: an in-context skill,
learned from text, that the Frozen experiment then tests with images in place of descriptions (and, to tell
an LM that lacks the skill from a vision side that cannot reach it, also with the descriptions).
No image is ever seen here.
"""
from __future__ import annotations

import random
from typing import Sequence

from .shapes import Shapes, ShapeScene, questions

VQA_TEMPLATE = "Q: {} A:"
# How a binding episode is written: (statement naming a thing, question about a new thing). "paper" is
# Tsimpoukelli et al.'s wording: the answer comes 6 tokens after the query and the new word 4 after the thing
# it names, so the LM has to match the query with an earlier thing across a template (a fuzzy, offset
# look-up). "direct" puts the new word right after the thing and ends the query with the thing: the plain
# look-up an induction head does ("what followed this last time?"). What a small LM learns of each:
# experiments/frozen_shapes/README.md.
BINDING_TEMPLATES = {"paper": ("This is a {}.", "Q: What is this? A:"), "direct": ("{}.", "")}


def binding_template(name: str) -> tuple[str, str]:
    """(statement, question) of a binding template; see ``BINDING_TEMPLATES``."""
    if name not in BINDING_TEMPLATES:
        raise ValueError(f"unknown binding template {name!r}; known: {sorted(BINDING_TEMPLATES)}")
    return BINDING_TEMPLATES[name]


# Made-up words for concept binding: the classic "dax", "blicket" and "wug" of word-learning studies, and
# more in the same style (a fixed list, so no generated string is accidentally a real word).
NONSENSE_WORDS = (
    "dax blicket wug toma fep zorb kiki bouba gazzer tulver modi pilk yorp zib fendle glorp snerf vosk "
    "traz quimble dorf pafe nork bliv jeb tarp lorp mib gorp snib wiffle drabe kest plonk vib zant frell "
    "hoon plim yeg droat skib twerl gip nabe zosh blick quarn tibe flurk mave wob jolp sproke dribble tazer "
    "brip cham flib kamp loob nerp ploof "
).split()


def nonsense_words(n: int, include: Sequence[str] = ("dax", "blicket")) -> list[str]:
    """``n`` made-up words, those in ``include`` first."""
    words = list(dict.fromkeys([*include, *NONSENSE_WORDS]))
    if n > len(words):
        raise ValueError(f"only {len(words)} nonsense words are available, {n} asked for")
    return words[:n]


def description(scene: ShapeScene) -> str:
    """The text that stands in for an image: its main object's attributes, "top left large red circle".

    Short, because a few visual prefix embeddings have to be able to play its part, and with the shape
    always last, so that in "<description> This is a dax." the shape is a fixed number of tokens before the
    new word: the kind of regularity a small LM picks up quickly, and that the visual prefix can then feed.
    """
    names = scene.objects[0].names()
    return f"{names['position']} {names['size']} {names['color']} {names['shape']}"


def available_shapes(dataset: Shapes, probe: int = 300) -> list[int]:
    """The shapes a dataset draws (its include/exclude filters may leave out some)."""
    found = sorted({dataset.scene(i).objects[0].shape for i in range(min(probe, len(dataset)))})
    if len(found) < 2:
        raise ValueError("concept binding needs a dataset with at least two shapes")
    return found


def scene_with_shape(dataset: Shapes, rng: random.Random, shape: int) -> tuple[int, ShapeScene]:
    """A random scene of ``dataset`` whose main object has the given shape (rejection sampling, no rendering)."""
    while True:
        i = rng.randrange(len(dataset))
        scene = dataset.scene(i)
        if scene.objects[0].shape == shape:
            return i, scene


def binding_text(descriptions: Sequence[str], words: Sequence[str], queries: Sequence[str],
                 answers: Sequence[str], template: str = "paper") -> str:
    """"<d1> This is a dax. <d2> This is a blicket. <q1> Q: What is this? A: dax <q2> Q: ... A: ..." ("paper"),
    "<d1> dax. <d2> blicket. <q1> dax <q2> ..." ("direct")."""
    statement, question = binding_template(template)
    parts = [f"{d} {statement.format(w)}" for d, w in zip(descriptions, words)]
    return " ".join(parts + [" ".join(x for x in (q, question, a) if x) for q, a in zip(queries, answers)])


DEFAULT_MIX = {"caption": 0.05, "described_caption": 0.15, "qa": 0.25, "binding": 0.45, "repeat": 0.1}


def text_corpus(dataset: Shapes, n_docs: int, words: Sequence[str], seed: int = 0,
                mix: dict[str, float] | None = None, max_queries: int = 3,
                template: str = "paper") -> list[str]:
    """``n_docs`` text documents about ``dataset``'s scenes, in the proportions of ``mix``.

    mix keys: ``caption``, ``described_caption``, ``qa``, ``binding``, ``repeat`` (default ``DEFAULT_MIX``).
    A binding episode names two shapes with new words and asks 1..``max_queries`` questions about them,
    written with ``template`` (see ``BINDING_TEMPLATES``).
    """
    binding_template(template)   # fail early on an unknown name
    mix = mix or DEFAULT_MIX
    unknown = set(mix) - set(DEFAULT_MIX)
    if unknown:
        raise ValueError(f"unknown corpus kinds {sorted(unknown)}; known: {sorted(DEFAULT_MIX)}")
    kinds, weights = zip(*mix.items())
    rng = random.Random(f"corpus/{seed}")
    shapes = available_shapes(dataset)
    docs = []
    for _ in range(n_docs):
        kind = rng.choices(kinds, weights)[0]
        scene = dataset.scene(rng.randrange(len(dataset)))
        if kind == "caption":
            docs.append(rng.choice(scene.captions))
        elif kind == "described_caption":
            docs.append(f"{description(scene)} {rng.choice(scene.captions)}")
        elif kind == "qa":
            q, a = rng.choice(questions(scene))
            docs.append(f"{description(scene)} {VQA_TEMPLATE.format(q)} {a}")
        elif kind == "repeat":
            # A random word sequence, then the same again: the plainest case of "what came after this
            # last time?", the look-up binding is made of.
            seq = [rng.choice(words) for _ in range(rng.randint(4, 10))]
            docs.append(" ".join(seq + seq))
        else:
            # Two objects of different shapes get new words; then other objects of those shapes (other
            # colour, size, place) are asked about: only the description of the same shape in the context
            # tells which word is the answer.
            named = rng.sample(shapes, 2)
            names = rng.sample(list(words), 2)
            supports = [description(scene_with_shape(dataset, rng, s)[1]) for s in named]
            targets = [rng.randrange(2) for _ in range(rng.randint(1, max_queries))]
            queries = [description(scene_with_shape(dataset, rng, named[t])[1]) for t in targets]
            docs.append(binding_text(supports, names, queries, [names[t] for t in targets], template))
    return docs


def vocabulary_texts(dataset: Shapes, words: Sequence[str]) -> list[str]:
    """Texts that cover every word the Frozen experiment can meet (for training the word-level tokenizer)."""
    from .shapes import COLORS, COUNTS, POSITIONS, SHAPE_PLURALS, SHAPES, SIZES
    templates = [t for pair in BINDING_TEMPLATES.values() for t in pair]
    fixed = [VQA_TEMPLATE, *templates, "yes no some objects shapes things object shape",
             " ".join(SHAPES), " ".join(SHAPE_PLURALS.values()), " ".join(COLORS), " ".join(SIZES),
             " ".join(POSITIONS), " ".join(COUNTS), " ".join(words)]
    rng = random.Random("vocabulary")
    scenes = [dataset.scene(rng.randrange(len(dataset))) for _ in range(2000)]
    return fixed + [c for s in scenes for c in s.captions] + [f"{q} {a}" for s in scenes for q, a in questions(s)]


# ------------------------------------------------------------------------------------------
# Text datasets: what a causal LM (`family: causal_lm`) trains on.
class TextCorpus:
    """Documents of text, one string each. ``vocabulary``: further texts a tokenizer trained on this corpus
    must cover (words the documents may happen not to contain, e.g. every colour of ``shapes``)."""

    def __init__(self, texts: Sequence[str], vocabulary: Sequence[str] = (), name: str = "text"):
        self.texts, self.vocabulary, self.name = list(texts), list(vocabulary), name

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> str:
        return self.texts[index]


def shapes_text(documents: int = 40000, nonsense_words_pool: int = 48,
                binding_words: Sequence[str] = ("dax", "blicket"), mix: dict[str, float] | None = None,
                template: str = "direct", split: str = "train", size: int = 20000, image_size: int = 64,
                seed: int = 0) -> TextCorpus:
    """``documents`` texts about the scenes of ``Shapes(split, size, image_size, seed)`` (:func:`text_corpus`, with
    ``binding_words`` among a pool of ``nonsense_words_pool`` made-up words); its vocabulary covers every word
    of ``shapes`` (:func:`vocabulary_texts`)."""
    if not isinstance(documents, int) or documents < 1:
        raise ValueError(f"shapes_text: documents must be a positive integer, got {documents!r}")
    scenes = Shapes(split, size=size, image_size=image_size, seed=seed)
    words = nonsense_words(nonsense_words_pool, include=tuple(binding_words))
    texts = text_corpus(scenes, documents, words, seed=seed, mix=mix, template=template)
    return TextCorpus(texts, vocabulary_texts(scenes, words), name="shapes_text")


def text_file(path: str) -> TextCorpus:
    """Documents from ``path``: a ``.jsonl`` file of ``{"text": ...}`` objects, else one document per non-empty
    line of a text file."""
    import json
    from pathlib import Path
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"text_file: {path} is not a file (give a .txt file, one document per line, or a "
                                f".jsonl file of {{\"text\": ...}} objects)")
    lines = p.read_text(encoding="utf-8").splitlines()
    if p.suffix != ".jsonl":
        texts = [line.strip() for line in lines if line.strip()]
    else:
        texts = []
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                obj = None
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise ValueError(f"text_file: {path} line {n} is not a JSON object with a string \"text\"")
            texts.append(obj["text"])
    if not texts:
        raise ValueError(f"text_file: {path} holds no document")
    return TextCorpus(texts, name=p.stem)
