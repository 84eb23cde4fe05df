"""What ``mmfm caption`` and ``mmfm vqa`` call: a saved Frozen model applied to image files.

``caption_files(MODEL_DIR, [img, ...])`` and ``vqa_files(MODEL_DIR, img, "what colour is it?")`` load the
model directory written by ``save_frozen`` (its LM and tokenizer from the paths recorded there) and
decode with any strategy of ``mmfm.frozen.generate``. ``add_caption_parser`` / ``add_vqa_parser`` add
the two sub-commands to an ``argparse`` sub-parser set, for the main ``mmfm`` command.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence

import torch


def _load(model_dir: str | Path, device: str | None):
    from .io import load_frozen
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = load_frozen(model_dir, device=device)
    if tokenizer is None:
        raise ValueError(f"{model_dir}: the saved model names no tokenizer (save it with save_frozen(..., tokenizer=...))")
    return model, tokenizer


def _images(paths: Sequence[str | Path]):
    from ..data.base import load_image
    return [load_image(p) for p in paths]


def caption_files(model_dir: str | Path, image_paths: Sequence[str | Path], *, prompt: str | None = None,
                  device: str | None = None, **gen: Any) -> list[tuple[str, str]]:
    """[(image path, caption)] for each image. ``gen``: strategy, max_new_tokens, num_beams, top_p, seed..."""
    from .generate import caption
    model, tokenizer = _load(model_dir, device)
    captions = caption(model, tokenizer, _images(image_paths), prompt=prompt, **gen)
    return [(str(p), c) for p, c in zip(image_paths, captions)]


def vqa_files(model_dir: str | Path, image_path: str | Path, question: str, *, template: str = "Q: {} A:",
              device: str | None = None, **gen: Any) -> str:
    """The model's answer to ``question`` about one image (open-ended, zero-shot)."""
    from .generate import answer
    model, tokenizer = _load(model_dir, device)
    gen.setdefault("max_new_tokens", 10)
    return answer(model, tokenizer, _images([image_path]), [question], template=template, **gen)[0]


# ------------------------------------------------------------------------------------------
def _add_generation_arguments(p: argparse.ArgumentParser, max_new_tokens: int) -> None:
    p.add_argument("--strategy", choices=["greedy", "beam", "nucleus"], default="greedy")
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    p.add_argument("--num-beams", type=int, default=4)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default=None)


def _generation_kwargs(args) -> dict[str, Any]:
    return {"strategy": args.strategy, "max_new_tokens": args.max_new_tokens, "num_beams": args.num_beams,
            "top_p": args.top_p, "temperature": args.temperature, "seed": args.seed, "device": args.device}


def cmd_caption(args) -> int:
    for path, text in caption_files(args.model_dir, args.images, prompt=args.prompt, **_generation_kwargs(args)):
        print(f"{path}\t{text}")
    return 0


def cmd_vqa(args) -> int:
    print(vqa_files(args.model_dir, args.image, args.question, template=args.template, **_generation_kwargs(args)))
    return 0


def add_caption_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("caption", help="caption images with a trained Frozen model")
    p.add_argument("model_dir", help="a directory written by save_frozen (e.g. DIR/model of the demo)")
    p.add_argument("images", nargs="+")
    p.add_argument("--prompt", default=None, help="text after the image, e.g. 'A picture of'")
    _add_generation_arguments(p, 30)
    p.set_defaults(func=cmd_caption)
    return p


def add_vqa_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("vqa", help="answer a question about an image with a trained Frozen model")
    p.add_argument("model_dir")
    p.add_argument("image")
    p.add_argument("question")
    p.add_argument("--template", default="Q: {} A:", help="how the question is put to the model")
    _add_generation_arguments(p, 10)
    p.set_defaults(func=cmd_vqa)
    return p
