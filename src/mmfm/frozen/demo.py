"""The embedded Frozen demonstration: ``python -m mmfm.frozen.demo --out DIR [--config configs/frozen_shapes.yaml]``.

No pretrained language model can be downloaded here, so the demonstration makes its own, then does
what the paper does with GPT-2 Large, in miniature, in a few CPU minutes:

1. text only: a word-level tokenizer and a small GPT-2 trained on text about ``shapes`` scenes
   (captions, descriptions + questions/answers, concept binding with nonsense words; see ``corpus``),
   saved to ``DIR/lm`` like any Hugging Face model, then frozen;
2. Frozen: a small vision encoder + linear map trained through the frozen LM on image captioning
   (mmfm's Trainer, ``FrozenObjective``), saved to ``DIR/model``; the LM is checked bit-identical after.
   Two options, both off by default (= the paper) and on in ``configs/frozen_shapes.yaml``:
   ``vision_pretrain`` first trains a small CLIP on the same images and starts the vision encoder from its
   image tower (same accuracy, a smaller tower, 2.5x faster Frozen training); ``frozen.prefix_weight`` also
   pulls the last ``frozen.prefix_targets`` prefix slots onto the LM's embeddings of the image's description
   ("left large red circle"). A free linear map finds prefixes that caption well and answer questions but
   that a 2-layer LM's look-up (induction) circuit does not match; on the LM's own word embeddings it
   does: binding 0.485 -> 0.92 (forced choice), see the README;
3. held-out evaluation: BLEU/CIDEr-D of captions vs a blind constant caption, open-ended VQA on shape and
   colour questions vs the majority answer, and few-shot binding of new words ("dax", "blicket") vs 50%;
4. measurements (parameters, peak memory, latency per caption, training times), ``results.json``,
   ``results.md`` and ``samples.png`` (held-out images with their generated captions and answers).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping

import torch
import yaml
from pydantic import Field, model_validator

from ..train.config import Strict
from ..util.overrides import apply_overrides, set_path
from ..data.shapes_text import DEFAULT_MIX


class TextLMSpec(Strict):
    reuse: str | None = Field(None, description="directory of a text LM from an earlier run (DIR/lm): skip step 1")
    n_embd: int = 128
    n_layer: int = 2
    n_head: int = 4
    n_positions: int = 128
    documents: int = Field(40000, gt=0, description="text documents in the corpus")
    steps: int = Field(2000, gt=0)
    batch_size: int = 32
    lr: float = 2e-3
    mix: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_MIX), description="corpus proportions")
    nonsense_words: int = Field(48, ge=2, description="size of the pool of made-up words used for binding")


class VisionPretrainSpec(Strict):
    """A small CLIP trained contrastively on the same images first; its image tower starts Frozen's vision
    encoder (``frozen.vision`` and ``frozen.vision_embed_dim`` then come from this model's config)."""
    model: str = Field("RN-S-64", description="an mmfm CLIP config name (mmfm models)")
    steps: int = Field(160, gt=0)
    batch_size: int = 128
    lr: float = 1.5e-3
    weight_decay: float = 0.1
    warmup_steps: int = 20


class FrozenSpec(Strict):
    vision: dict[str, Any] | str = Field(description="ignored with vision_pretrain (the CLIP's image tower is used)",
                                         default_factory=lambda: {"kind": "modified_resnet", "image_size": 64,
                                                                  "width": 32, "layers": [1, 1, 1, 1], "head_width": 32})
    vision_embed_dim: int | None = 256
    prefix_length: int = Field(4, description="visual tokens; 4 lets the prefix stand in for a 4-5 word description")
    vision_init: str | None = Field(None, description="directory of a saved mmfm CLIP whose image tower starts "
                                                        "the vision encoder (its config must equal `vision`)")
    context_length: int = 20
    steps: int = Field(500, gt=0)
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    prefix_weight: float = Field(0.0, ge=0, description="weight of the prefix-on-description loss (0: off, "
                                 "captioning alone as in the paper; see FrozenModel.forward)")
    prefix_targets: int | None = Field(None, ge=1, description="how many of the last prefix slots the prefix loss "
                                       "places on description words (default: all of them)")
    vqa_fraction: float = Field(0.0, ge=0, le=1, description="share of training items with a VQA target (0: captions only, as in the paper)")


class DemoConfig(Strict):
    name: str = "frozen_shapes"
    seed: int = 0
    threads: int | None = Field(2, description="torch CPU threads (None: torch's default)")
    image_size: int = 64
    train_size: int = 20000
    test_size: int = 300
    lm: TextLMSpec = Field(default_factory=TextLMSpec)
    frozen: FrozenSpec = Field(default_factory=FrozenSpec)
    vision_pretrain: VisionPretrainSpec | None = Field(
        None, description="train a small CLIP on the images first and start the vision encoder from its image tower")
    eval_captions: int = 200
    eval_vqa_images: int = 150
    eval_binding: int = 200
    binding_words: tuple[str, str] = ("dax", "blicket")
    binding_template: Literal["direct", "paper"] = Field(
        "direct", description="how binding episodes are written, in the LM's corpus and in the test prompts "
                              "(see mmfm.frozen.corpus.BINDING_TEMPLATES)")
    samples_png: int = 8

    @model_validator(mode="after")
    def _one_vision_start(self):
        if self.vision_pretrain is not None and self.frozen.vision_init:
            raise ValueError("give either vision_pretrain (train a CLIP first) or frozen.vision_init (a saved "
                             "CLIP), not both")
        if self.frozen.prefix_targets and self.frozen.prefix_targets > self.frozen.prefix_length:
            raise ValueError(f"frozen.prefix_targets ({self.frozen.prefix_targets}) cannot exceed "
                             f"frozen.prefix_length ({self.frozen.prefix_length})")
        return self


def load_demo_config(path: str | Path | None,
                     overrides: Mapping[str, Any] | Iterable[str] | None = None) -> DemoConfig:
    """The demo's settings: the file's ``frozen_demo`` section (or the whole file), then the overrides, either
    ``--set`` strings (``frozen.steps=400``; a leading ``frozen_demo.`` is dropped) or ``{dotted key: value}``."""
    raw: dict[str, Any] = {}
    if path is not None:
        raw = yaml.safe_load(Path(path).read_text()) or {}
        raw = raw.get("frozen_demo", raw)   # the demo's section of a larger file, or the whole file
    if isinstance(overrides, Mapping):
        for key, value in overrides.items():
            set_path(raw, key, value)
    else:
        apply_overrides(raw, overrides or [], prefix="frozen_demo.")
    return DemoConfig.model_validate(raw)


def _lm_fingerprint(model) -> str:
    h = hashlib.sha256()
    for name, p in sorted(model.lm.named_parameters()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _init_vision(model, directory: str) -> None:
    """Start Frozen's vision encoder from the image tower of a saved mmfm CLIP (same tower config)."""
    from ..api import from_pretrained
    clip = from_pretrained(directory)
    want, have = model.config.vision, clip.config.vision
    if want != have or model.config.vision_embed_dim != clip.config.embed_dim:
        raise ValueError(f"frozen.vision_init: {directory} has image tower {have} with output width "
                         f"{clip.config.embed_dim}; frozen.vision is {want} with vision_embed_dim "
                         f"{model.config.vision_embed_dim}")
    model.visual.load_state_dict(clip.visual.state_dict())


def _pretrain_vision(cfg: DemoConfig, train_ds, out: Path, progress: bool):
    """Train ``cfg.vision_pretrain.model`` (a CLIP) contrastively on ``train_ds`` with mmfm's Trainer and save
    it to ``out/model``: (its image tower config, its output width, a summary)."""
    from ..checkpoints import save_pretrained
    from ..data import ImageTextView
    from ..data.transforms import image_transform
    from ..api import create_model
    from ..tokenizer import get_tokenizer
    from ..train import TrainConfig, Trainer
    spec = cfg.vision_pretrain
    clip = create_model(spec.model)
    if getattr(clip.config, "family", None) != "clip":
        raise ValueError(f"vision_pretrain.model: {spec.model!r} is not a CLIP model")
    if clip.config.vision.image_size != cfg.image_size:
        raise ValueError(f"vision_pretrain.model: {spec.model!r} takes {clip.config.vision.image_size}px images; "
                         f"the demo's image_size is {cfg.image_size}")
    tok = get_tokenizer(clip.config.text.context_length)
    view = ImageTextView(train_ds, image_transform(cfg.image_size, train=True, scale=(0.85, 1.0)), tok,
                         caption_mode="random", seed=cfg.seed)
    tcfg = TrainConfig(max_steps=spec.steps, batch_size=spec.batch_size, lr=spec.lr, weight_decay=spec.weight_decay,
                       warmup_steps=spec.warmup_steps, log_every=max(spec.steps // 4, 1), seed=cfg.seed, device="cpu",
                       progress=progress, tensorboard=False, resume=False, keep_last=1)
    result = Trainer(clip, view, tcfg, out / "train").fit()
    save_pretrained(clip, out / "model")
    summary = {"model": spec.model, "steps": result.steps, "train_time_s": result.wall_time_s,
               "final_loss": result.final_loss, "peak_rss_mb": result.memory.get("peak_rss_mb"),
               "model_dir": str(out / "model")}
    return clip.config.vision, clip.config.embed_dim, summary


def _log(msg: str) -> None:
    print(msg, flush=True)


def run_demo(out_dir: str | Path, cfg: DemoConfig | None = None, progress: bool = False) -> dict[str, Any]:
    from ..api import create_model   # reads the pretrained LM (models never read weights)
    from ..data import ImageTextView, Shapes
    from ..data.transforms import image_transform
    from ..measure import count_parameters, measure_latency, track_memory
    from ..models.frozen import FrozenConfig
    from ..train import TrainConfig, Trainer
    from ..data.shapes_text import nonsense_words, text_corpus, vocabulary_texts
    from .generate import caption
    from .io import save_frozen
    from .lm import language_model_config, load_tokenizer, tiny_gpt2_config, train_text_lm, train_word_tokenizer
    from .objective import FrozenObjective
    from .tasks import CaptionVQAView, evaluate_binding, evaluate_captioning, evaluate_vqa, majority_answers
    from .text import FrozenTokenizer

    cfg = cfg or DemoConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    t_start = time.perf_counter()
    train_ds = Shapes("train", size=cfg.train_size, image_size=cfg.image_size, seed=cfg.seed)
    test_ds = Shapes("test", size=cfg.test_size, image_size=cfg.image_size, seed=cfg.seed)

    # 1. Text only: tokenizer + small GPT-2, then frozen. ------------------------------------------------
    if cfg.lm.reuse:
        _log(f"[1/4] reusing the text-only language model in {cfg.lm.reuse}")
        lm_dir = Path(cfg.lm.reuse)
        hf_tok = load_tokenizer(str(lm_dir))
        lm_cfg = language_model_config(str(lm_dir))
        lm_summary: dict[str, Any] = {"reused": str(lm_dir), "train_time_s": 0.0, "steps": 0}
        lm_peak_mb = None
    else:
        _log("[1/4] training the text-only language model")
        words = nonsense_words(cfg.lm.nonsense_words, include=cfg.binding_words)
        corpus = text_corpus(train_ds, cfg.lm.documents, words, seed=cfg.seed, mix=cfg.lm.mix,
                             template=cfg.binding_template)
        hf_tok = train_word_tokenizer(vocabulary_texts(train_ds, words) + corpus)
        lm_cfg = tiny_gpt2_config(len(hf_tok), hf_tok.eos_token_id, n_embd=cfg.lm.n_embd, n_layer=cfg.lm.n_layer,
                                  n_head=cfg.lm.n_head, n_positions=cfg.lm.n_positions)
        lm_dir = out / "lm"
        with track_memory() as lm_mem:
            _, lm_result = train_text_lm(corpus, hf_tok, lm_cfg, lm_dir, steps=cfg.lm.steps,
                                         batch_size=cfg.lm.batch_size, lr=cfg.lm.lr, seed=cfg.seed,
                                         log_every=max(cfg.lm.steps // 5, 1), progress=progress)
        lm_summary = {"steps": lm_result.steps, "documents": len(corpus), "final_loss": lm_result.final_loss,
                      "train_time_s": lm_result.wall_time_s}
        lm_peak_mb = lm_mem.to_dict()["peak_rss_mb"]
    tok = FrozenTokenizer(hf_tok, cfg.frozen.context_length)

    # 2. Frozen: train the vision side through the frozen LM. --------------------------------------------
    vision, vision_dim, vision_init = cfg.frozen.vision, cfg.frozen.vision_embed_dim, cfg.frozen.vision_init
    clip_summary = None
    if cfg.vision_pretrain is not None:
        _log(f"[2/4] pretraining the vision encoder: a small CLIP ({cfg.vision_pretrain.model}) on the training images")
        vision, vision_dim, clip_summary = _pretrain_vision(cfg, train_ds, out / "clip", progress)
        vision_init = clip_summary["model_dir"]
    _log("[2/4] training Frozen (vision encoder + linear map; the LM stays frozen)")
    model_cfg = FrozenConfig(vision=vision, vision_embed_dim=vision_dim,
                             image_size=cfg.image_size, prefix_length=cfg.frozen.prefix_length, lm=lm_cfg,
                             pretrained_lm=str(lm_dir.resolve()), context_length=cfg.frozen.context_length)
    model = create_model(model_cfg)   # the door reads the LM pretrained above from lm_dir
    if vision_init:
        _init_vision(model, vision_init)
    lm_before = _lm_fingerprint(model)
    train_tf, eval_tf = image_transform(cfg.image_size, train=True, scale=(0.85, 1.0)), image_transform(cfg.image_size)
    if cfg.frozen.vqa_fraction > 0 or cfg.frozen.prefix_weight > 0:
        train_view = CaptionVQAView(train_ds, train_tf, tok, cfg.frozen.vqa_fraction, seed=cfg.seed,
                                    prefix_targets=(cfg.frozen.prefix_targets or cfg.frozen.prefix_length)
                                    if cfg.frozen.prefix_weight > 0 else 0)
    else:
        train_view = ImageTextView(train_ds, train_tf, tok, caption_mode="random", seed=cfg.seed)
    val_ds = Shapes("val", size=max(cfg.frozen.batch_size, 64), image_size=cfg.image_size, seed=cfg.seed)
    val_view = ImageTextView(val_ds, eval_tf, tok, caption_mode="first")
    tcfg = TrainConfig(max_steps=cfg.frozen.steps, batch_size=cfg.frozen.batch_size, lr=cfg.frozen.lr,
                       weight_decay=cfg.frozen.weight_decay, warmup_steps=cfg.frozen.warmup_steps,
                       log_every=max(cfg.frozen.steps // 10, 1), seed=cfg.seed, device="cpu", progress=progress,
                       tensorboard=False, resume=False, keep_last=1)
    objective = FrozenObjective.for_tokenizer(tok, max_new_tokens=cfg.frozen.context_length,
                                              prefix_weight=cfg.frozen.prefix_weight)
    result = Trainer(model, train_view, tcfg, out / "train", objective=objective, val_data=val_view).fit()
    lm_unchanged = _lm_fingerprint(model) == lm_before and all(p.grad is None for p in model.lm.parameters())
    save_frozen(model, out / "model")
    model.eval()

    # 3. Held-out evaluation. -----------------------------------------------------------------------------
    _log("[3/4] evaluating on held-out images")
    t_eval = time.perf_counter()
    cap = evaluate_captioning(model, tok, test_ds, cfg.eval_captions)
    from ..eval.captioning import caption_metrics
    blind_caption = _most_common_caption(train_ds)
    blind = caption_metrics([blind_caption] * cap["n_images"], [test_ds.get_captions(i) for i in range(cap["n_images"])])
    vqa = evaluate_vqa(model, tok, test_ds, train_ds, cfg.eval_vqa_images)
    binding = evaluate_binding(model, tok, test_ds, cfg.eval_binding, words=cfg.binding_words, seed=cfg.seed,
                               template=cfg.binding_template)
    # The same tasks with each image replaced by its description: what the frozen LM itself can do. Frozen
    # can only pass on skills its LM has, so this separates "the LM lacks it" from "vision cannot reach it".
    vqa_text = evaluate_vqa(model, tok, test_ds, train_ds, cfg.eval_vqa_images, as_text=True)
    binding_text = evaluate_binding(model, tok, test_ds, cfg.eval_binding, words=cfg.binding_words, seed=cfg.seed,
                                    template=cfg.binding_template, as_text=True)
    eval_time = time.perf_counter() - t_eval

    # 4. Measurements, report, figure. --------------------------------------------------------------------
    _log("[4/4] measuring and writing the report")
    img = test_ds[0].image
    latency = {}
    for strategy in ("greedy", "beam"):
        fn = lambda s=strategy: caption(model, tok, [img], strategy=s, max_new_tokens=cfg.frozen.context_length)
        latency[strategy] = measure_latency(fn, batch_size=1, repeats=10, warmup=2).to_dict()
    params = count_parameters(model).to_dict()
    results = {
        "name": cfg.name, "config": cfg.model_dump(mode="json"),
        "captioning": {**cap["metrics"], "n_images": cap["n_images"]},
        "captioning_blind_baseline": {"caption": blind_caption, **blind},
        "vqa": {k: v for k, v in vqa.items() if k != "examples"},
        "binding": {k: v for k, v in binding.items() if k != "examples"},
        "text_only_lm": {"vqa_accuracy": vqa_text["accuracy"], "vqa_per_question": vqa_text["per_question"],
                         "binding_open_ended_accuracy": binding_text["open_ended_accuracy"],
                         "binding_forced_choice_accuracy": binding_text["forced_choice_accuracy"]},
        "measurements": {
            "parameters": params, "lm_unchanged_after_training": lm_unchanged,
            "text_lm": {**lm_summary, "peak_rss_mb": lm_peak_mb},
            "vision_pretrain": clip_summary,
            "frozen_train": {"steps": result.steps, "train_time_s": result.wall_time_s,
                             "samples_per_s": result.samples_per_s, "final_loss": result.final_loss,
                             "peak_rss_mb": result.memory.get("peak_rss_mb"), "val": result.val},
            "latency_per_caption_ms": {k: v["mean_ms"] for k, v in latency.items()},
            "eval_time_s": eval_time, "total_time_s": time.perf_counter() - t_start,
        },
        "examples": {"captions": cap["examples"][:12], "vqa": vqa["examples"], "binding": binding["examples"]},
        "files": {"language_model": str(lm_dir), "model": str(out / "model"), "samples": str(out / "samples.png")},
    }
    _plot_samples(model, tok, test_ds, cfg, out / "samples.png")
    from ..util.atomic import atomic_write_text
    atomic_write_text(out / "results.json", json.dumps(results, indent=2, default=str) + "\n")
    atomic_write_text(out / "results.md", render_markdown(results))
    _log(render_markdown(results))
    return results


def _most_common_caption(dataset, n: int = 2000) -> str:
    from collections import Counter
    counts = Counter(c for i in range(min(n, len(dataset))) for c in dataset.get_captions(i))
    return counts.most_common(1)[0][0]


def _plot_samples(model, tok, dataset, cfg: DemoConfig, path: Path) -> None:
    import textwrap

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from ..data.shapes_text import VQA_TEMPLATE
    from .generate import generate
    from .tasks import binding_episodes, binding_prompt
    n = cfg.samples_png
    images = [dataset[i].image for i in range(n)]
    captions = generate(model, tok, [[im] for im in images], max_new_tokens=cfg.frozen.context_length)
    shapes = generate(model, tok, [[im, VQA_TEMPLATE.format("what shape is this?")] for im in images], max_new_tokens=3)
    colours = generate(model, tok, [[im, VQA_TEMPLATE.format("what colour is it?")] for im in images], max_new_tokens=3)
    episodes = binding_episodes(dataset, 3, cfg.binding_words, seed=cfg.seed + 1)
    prompts = [binding_prompt(dataset, e, template=cfg.binding_template) for e in episodes]
    bound = generate(model, tok, prompts, max_new_tokens=3)
    cols = max(n // 2, 3)
    fig, axes = plt.subplots(3, cols, figsize=(2.6 * cols, 9.6))
    for k, ax in enumerate(axes[:2].flat):
        ax.axis("off")
        if k >= n:
            continue
        ax.imshow(images[k])
        ax.set_title(f"{textwrap.fill(captions[k], 40)}\nshape? {shapes[k]} | colour? {colours[k]}", fontsize=7)
    for ax in axes[2]:
        ax.axis("off")
    for k, (e, answer) in enumerate(zip(episodes, bound)):
        if k >= cols:
            break
        strip = _binding_strip([dataset[i].image for i in e["supports"]] + [dataset[e["query"]].image])
        axes[2, k].imshow(strip)
        axes[2, k].set_title(f"{e['words'][0]} | {e['words'][1]} | query -> {answer or '?'}\n(truth: {e['answer']})",
                             fontsize=7)
    fig.suptitle("Frozen on shapes: held-out images, generated captions / answers, and few-shot binding", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _binding_strip(images):
    import PIL.Image
    w, h = images[0].size
    strip = PIL.Image.new("RGB", (w * len(images) + 6 * (len(images) - 1), h), (255, 255, 255))
    for k, im in enumerate(images):
        strip.paste(im, (k * (w + 6), 0))
    return strip


def _binding_example(template: str) -> str:
    from ..data.shapes_text import binding_template
    statement, question = binding_template(template)
    return "`" + " ".join([f"[image] {statement.format('dax')}", f"[image] {statement.format('blicket')}",
                           f"[image] {question}".strip()]) + "`"


def _training_summary(c: dict[str, Any]) -> str:
    f = c["frozen"]
    parts = ["captioning"]
    if f["prefix_weight"]:
        parts.append(f"the prefix placed on the LM's embeddings of the image's description (weight {f['prefix_weight']:g})")
    if f["vqa_fraction"]:
        parts.append(f"VQA targets ({f['vqa_fraction']:.0%} of items)")
    text = ", ".join(parts[:-1]) + (" and " if len(parts) > 1 else "") + parts[-1]
    if c.get("vision_pretrain"):
        text += f", starting from the image tower of a small CLIP ({c['vision_pretrain']['model']}) trained on the same images"
    return text


def render_markdown(r: dict[str, Any]) -> str:
    from ..report import fmt, human_bytes, markdown_table
    m = r["measurements"]
    p = m["parameters"]
    cap, blind, vqa, b = r["captioning"], r["captioning_blind_baseline"], r["vqa"], r["binding"]
    t = r["text_only_lm"]
    lines = [f"# Frozen on shapes ({r['name']})", "",
             "A small GPT-2 trained on text only, then frozen; a vision encoder trained through it on "
             f"{_training_summary(r['config'])}. All numbers on held-out images.", "",
             "## Results", "",
             markdown_table(["task", "metric", "Frozen (images)", "LM alone (descriptions)", "baseline", "baseline is"], [
                 ["captioning", "BLEU-4", cap["BLEU-4"], None, blind["BLEU-4"], f"one constant caption ({blind['caption']!r})"],
                 ["captioning", "CIDEr-D", cap["CIDEr-D"], None, blind["CIDEr-D"], "same"],
                 ["VQA (shape, colour)", "VQAv2 accuracy", vqa["accuracy"], t["vqa_accuracy"], vqa["majority_baseline"],
                  "majority answer per question"],
                 *[[f"VQA: {q}", "VQAv2 accuracy", a, t["vqa_per_question"].get(q),
                    vqa["per_question_majority_baseline"][q], "majority answer"] for q, a in vqa["per_question"].items()],
                 ["few-shot binding", "open-ended accuracy", b["open_ended_accuracy"], t["binding_open_ended_accuracy"],
                  b["chance"], "chance (2 words)"],
                 ["few-shot binding", "forced-choice accuracy", b["forced_choice_accuracy"],
                  t["binding_forced_choice_accuracy"], b["chance"], "chance"],
             ]), "",
             (("Zero-shot: the vision side never sees a question or a binding episode; both reach images "
               "through the frozen LM. ") if not r["config"]["frozen"]["vqa_fraction"] else
              "VQA is not zero-shot here (`frozen.vqa_fraction` > 0: question-answer targets in training); "
              "binding is. ") +
             "\"LM alone\" is the same LM given each image's text description instead: Frozen can pass on only "
             "what its LM can do.", "",
             f"BLEU-1..4: {', '.join(fmt(cap[f'BLEU-{n}']) for n in range(1, 5))} on {cap['n_images']} images; "
             f"VQA on {vqa['n_questions']} questions; binding on {b['n_episodes']} episodes with the new words "
             f"{' / '.join(repr(w) for w in b['words'])} (answered with one of them: {fmt(b['answered_a_new_word'])}), "
             f"written with the {b['template']!r} template: {_binding_example(b['template'])}.", "",
             "## Measurements", "",
             markdown_table(["part", "total", "trainable", "frozen"],
                            [[k, v["total"], v["trainable"], v["frozen"]] for k, v in p["per_tower"].items()]
                            + [["**Frozen model**", p["total"], p["trainable"], p["frozen"]]]), "",
             markdown_table(["measurement", "value"], [
                 ["LM weights unchanged by Frozen training", m["lm_unchanged_after_training"]],
                 ["text LM training time", f"{m['text_lm']['train_time_s']:.1f} s ({m['text_lm']['steps']} steps)"],
                 ["text LM peak memory (RSS)", human_bytes((m["text_lm"]["peak_rss_mb"] or 0) * 2 ** 20)],
                 *([["vision pretraining time (CLIP)", f"{m['vision_pretrain']['train_time_s']:.1f} s "
                                                          f"({m['vision_pretrain']['steps']} steps)"]]
                   if m.get("vision_pretrain") else []),
                 ["Frozen training time", f"{m['frozen_train']['train_time_s']:.1f} s ({m['frozen_train']['steps']} steps)"],
                 ["Frozen training peak memory (RSS)", human_bytes((m["frozen_train"]["peak_rss_mb"] or 0) * 2 ** 20)],
                 ["latency per caption, greedy (batch 1)", f"{m['latency_per_caption_ms']['greedy']:.1f} ms"],
                 ["latency per caption, beam 4 (batch 1)", f"{m['latency_per_caption_ms']['beam']:.1f} ms"],
                 ["evaluation time", f"{m['eval_time_s']:.1f} s"],
                 ["total time", f"{m['total_time_s']:.1f} s"],
             ]), "",
             "## Examples", ""]
    for e in r["examples"]["captions"][:6]:
        lines.append(f"- `{e['caption']}` (references: {'; '.join(e['references'][:2])})")
    for e in r["examples"]["binding"][:3]:
        lines.append(f"- binding: {e['shapes'][0]} = {e['words'][0]!r}, {e['shapes'][1]} = {e['words'][1]!r}; "
                     f"query answer {e['generated']!r} (truth {e['answer']!r})")
    lines += ["", "![samples](samples.png)", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmfm.frozen.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--config", default=None, help="YAML (e.g. configs/frozen_shapes.yaml); defaults otherwise")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting, e.g. frozen.steps=400")
    parser.add_argument("--progress", action="store_true", help="show a progress bar while training Frozen")
    args = parser.parse_args(argv)
    run_demo(args.out, load_demo_config(args.config, args.set), progress=args.progress)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
