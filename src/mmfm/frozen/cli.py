"""What ``mmfm caption`` and ``mmfm vqa`` call: a saved Frozen model applied to image files.

``caption_files(MODEL_DIR, [img, ...])`` and ``vqa_many(MODEL_DIR, [img, ...], "what colour is it?")`` load the
model directory written by ``save_frozen`` (its LM and tokenizer from the paths recorded there) and
decode with any strategy of ``mmfm.frozen.generate``. ``add_caption_parser`` / ``add_vqa_parser`` add
the two sub-commands to an ``argparse`` sub-parser set, for the main ``mmfm`` command.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

from ..util.argtypes import positive_float, positive_int, probability


def _load(model_dir: str | Path, device: str | None):
    from .io import load_frozen
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = load_frozen(model_dir, device=device)
    if tokenizer is None:
        raise ValueError(f"{model_dir}: the saved model names no tokenizer (save it with save_frozen(..., tokenizer=...))")
    return model, tokenizer


class FileOutputs(list):
    """``[(image path, text)]`` for the images that could be read; ``skipped`` = ``[(path, why)]`` for the rest."""

    def __init__(self, items=(), skipped=()):
        super().__init__(items)
        self.skipped: list[tuple[str, str]] = list(skipped)


def _read_images(paths: Sequence[str | Path]):
    """(readable paths, their images, [(path, why)] of the unreadable): one bad file in a folder of many
    should cost that file, not the run. None readable is an error."""
    from ..data.base import load_image
    kept, images, skipped = [], [], []
    for path in paths:
        try:
            images.append(load_image(path))
            kept.append(str(path))
        except OSError as exc:   # missing, a folder, truncated, not an image (ImageLoadError)
            skipped.append((str(path), exc.strerror or str(exc)))   # strerror: "No such file or directory"
    if not images:
        raise ValueError(f"none of the {len(paths)} image(s) could be read, e.g. {skipped[0][0]}: {skipped[0][1]}")
    return kept, images, skipped


def caption_files(model_dir: str | Path, image_paths: Sequence[str | Path], *, prompt: str | None = None,
                  device: str | None = None, **gen: Any) -> FileOutputs:
    """[(image path, caption)] for each readable image (``.skipped``: the others, and why).
    ``gen``: strategy, max_new_tokens, num_beams, top_p, seed..."""
    from .generate import caption
    paths, images, skipped = _read_images(image_paths)
    model, tokenizer = _load(model_dir, device)
    return FileOutputs(zip(paths, caption(model, tokenizer, images, prompt=prompt, **gen)), skipped)


def vqa_many(model_dir: str | Path, image_paths: Sequence[str | Path], question: str, *,
             template: str = "Q: {} A:", device: str | None = None, **gen: Any) -> FileOutputs:
    """[(image path, answer)] to ``question`` about each readable image (open-ended, zero-shot)."""
    from .generate import answer
    paths, images, skipped = _read_images(image_paths)
    model, tokenizer = _load(model_dir, device)
    gen.setdefault("max_new_tokens", 10)
    answers = answer(model, tokenizer, images, [question] * len(images), template=template, **gen)
    return FileOutputs(zip(paths, answers), skipped)


def vqa_files(model_dir: str | Path, image_path: str | Path, question: str, *, template: str = "Q: {} A:",
              device: str | None = None, **gen: Any) -> str:
    """The model's answer to ``question`` about one image (open-ended, zero-shot)."""
    return vqa_many(model_dir, [image_path], question, template=template, device=device, **gen)[0][1]


# ------------------------------------------------------------------------------------------
def _add_generation_arguments(p: argparse.ArgumentParser, max_new_tokens: int) -> None:
    p.add_argument("--strategy", choices=["greedy", "beam", "nucleus"], default="greedy", help="decoding strategy")
    p.add_argument("--max-new-tokens", type=positive_int, default=max_new_tokens,
                   help="most tokens generated per image (prompt + these must fit the LM's positions)")
    p.add_argument("--num-beams", type=positive_int, default=4, help="beams of --strategy beam")
    p.add_argument("--top-p", type=probability, default=0.9, help="probability mass kept by --strategy nucleus, in (0, 1]")
    p.add_argument("--temperature", type=positive_float, default=1.0, help="softmax temperature of --strategy nucleus")
    p.add_argument("--seed", type=int, default=None, help="seed of --strategy nucleus (default: unseeded)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available, else cpu)")


def _generation_kwargs(args) -> dict[str, Any]:
    return {"strategy": args.strategy, "max_new_tokens": args.max_new_tokens, "num_beams": args.num_beams,
            "top_p": args.top_p, "temperature": args.temperature, "seed": args.seed, "device": args.device}


def _print(outputs: FileOutputs, command: str, with_paths: bool = True) -> int:
    for path, text in outputs:
        print(f"{path}\t{text}" if with_paths else text)
    if outputs.skipped:
        names = "; ".join(f"{path} ({why})" for path, why in outputs.skipped)
        print(f"mmfm {command}: skipped {len(outputs.skipped)} unreadable image(s): {names}", file=sys.stderr)
    return 0


def cmd_caption(args) -> int:
    return _print(caption_files(args.model_dir, args.images, prompt=args.prompt, **_generation_kwargs(args)),
                  "caption")


def cmd_vqa(args) -> int:
    outputs = vqa_many(args.model_dir, args.images, args.question, template=args.template, **_generation_kwargs(args))
    return _print(outputs, "vqa", with_paths=len(args.images) > 1)   # one image: just the answer


def add_caption_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("caption", help="caption images with a trained Frozen model")
    p.add_argument("model_dir", help="a directory written by save_frozen (e.g. frozen/model of experiments/frozen_shapes)")
    p.add_argument("images", nargs="+", help="image files (unreadable ones are skipped and named)")
    p.add_argument("--prompt", default=None, help="text after the image, e.g. 'A picture of'")
    _add_generation_arguments(p, 30)
    p.set_defaults(func=cmd_caption)
    return p


def add_vqa_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("vqa", help="answer a question about images with a trained Frozen model")
    p.add_argument("model_dir", help="a directory written by save_frozen (e.g. frozen/model of experiments/frozen_shapes)")
    p.add_argument("images", nargs="+", metavar="image", help="image files (unreadable ones are skipped and named)")
    p.add_argument("question", help="e.g. 'what colour is it?' (color and colour both work with the Frozen experiment's LM)")
    p.add_argument("--template", default="Q: {} A:", help="how the question is put to the model, {} = the question "
                                                         "(default: 'Q: {} A:')")
    _add_generation_arguments(p, 10)
    p.set_defaults(func=cmd_vqa)
    return p
