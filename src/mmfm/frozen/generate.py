"""Text generation with Frozen from interleaved image-text prompts.

A prompt is a sequence of parts, each a string, a PIL image or an image tensor [3, H, W] (already
transformed). Every image becomes ``prefix_length`` visual embeddings and every string its token
embeddings; concatenated, they are what the frozen LM reads, e.g. fast concept binding::

    [img_a, "This is a dax.", img_b, "This is a blicket.", img_query, "Q: What is this? A:"]

Prompts of different lengths are left-padded (with an attention mask, so positions stay right) and
decoded by ``transformers``' ``generate`` from ``inputs_embeds``: greedy, beam search or nucleus sampling.
"""
from __future__ import annotations

import re
from typing import Callable, Literal, Sequence, Union

import PIL.Image
import torch
from torch import nn

from ..errors import UserError
from ..util.modes import eval_mode

Part = Union[str, PIL.Image.Image, torch.Tensor]
Prompt = Union[Part, Sequence[Part]]
Strategy = Literal["greedy", "beam", "nucleus"]


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _parts(prompt: Prompt) -> list[Part]:
    if isinstance(prompt, (str, PIL.Image.Image)) or torch.is_tensor(prompt):
        return [prompt]
    return list(prompt)


def known_spelling(tokenizer, text: str) -> str:
    """``text`` with each word of ``SPELLINGS`` the tokenizer does not know in the spelling it does know.

    A word-level LM (the Frozen experiment's) knows only the spelling its training text used and reads the other
    as <unk>: "what color is it?" was answered ": : : top left".

    Only tokenizers with an unknown-word token can not know a word; others get ``text`` unchanged.
    """
    from ..data.base import SPELLINGS
    unk = getattr(getattr(tokenizer, "tokenizer", tokenizer), "unk_token_id", None)
    if unk is None:
        return text

    def swap(match: re.Match) -> str:
        word = match.group(0)
        other = SPELLINGS.get(word.lower())
        if other is None or unk not in tokenizer.encode(word) or unk in tokenizer.encode(other):
            return word
        return other.capitalize() if word[0].isupper() else other

    return re.sub(r"[A-Za-z]+", swap, text)


def max_positions(model: nn.Module) -> int | None:
    """How many positions the LM has (prompt + generated tokens), if its config says."""
    config = getattr(model.lm, "config", None)
    return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)


def default_image_transform(model: nn.Module) -> Callable:
    from ..data.transforms import image_transform
    return image_transform(model.image_size)


def embed_prompts(model: nn.Module, tokenizer, prompts: Sequence[Prompt],
                  image_transform: Callable | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(embeddings [B, L, D], attention mask [B, L]) of the prompts, left-padded to a common length.

    All images of all prompts go through the vision encoder as one batch.
    """
    device = _device(model)
    transform = None
    images: list[torch.Tensor] = []
    layouts: list[list[tuple[str, object]]] = []
    for prompt in prompts:
        layout = []
        for part in _parts(prompt):
            if isinstance(part, str):
                ids = tokenizer.encode(known_spelling(tokenizer, part))
                if ids:
                    layout.append(("text", ids))
            elif isinstance(part, PIL.Image.Image) or torch.is_tensor(part):
                if isinstance(part, PIL.Image.Image):
                    transform = transform or image_transform or default_image_transform(model)
                    part = transform(part)
                if part.ndim != 3:
                    raise ValueError(f"an image in a prompt must be [3, H, W], got shape {list(part.shape)}")
                layout.append(("image", len(images)))
                images.append(part)
            else:
                raise TypeError(f"a prompt part must be a string, a PIL image or an image tensor, got {type(part).__name__}")
        if not layout:
            raise ValueError("an empty prompt: give at least one image or some text")
        layouts.append(layout)
    prefixes = model.embed_images(torch.stack(images).to(device)) if images else None
    sequences = []
    for layout in layouts:
        pieces = []
        for kind, value in layout:
            if kind == "image":
                pieces.append(prefixes[value])
            else:
                pieces.append(model.embed_tokens(torch.tensor(value, device=device)))
        sequences.append(torch.cat([p.to(pieces[0].dtype) for p in pieces]))
    width = max(s.shape[0] for s in sequences)
    embeds = sequences[0].new_zeros(len(sequences), width, sequences[0].shape[-1])
    mask = torch.zeros(len(sequences), width, dtype=torch.long, device=device)
    for i, s in enumerate(sequences):
        embeds[i, width - s.shape[0]:] = s        # left padding: generation continues at the right edge
        mask[i, width - s.shape[0]:] = 1
    return embeds, mask


def generation_config(tokenizer, strategy: Strategy = "greedy", max_new_tokens: int = 20, num_beams: int = 4,
                      top_p: float = 0.9, top_k: int = 0, temperature: float = 1.0, length_penalty: float = 1.0):
    """A fresh ``GenerationConfig`` (never the LM's saved defaults) for one decoding strategy.

    Values out of range are refused here, by name (transformers fails later, obscurely, or not at all).
    """
    from transformers import GenerationConfig
    if max_new_tokens < 1:
        raise UserError(f"max_new_tokens (--max-new-tokens) must be >= 1, got {max_new_tokens}")
    if strategy == "beam" and num_beams < 1:
        raise UserError(f"num_beams (--num-beams) must be >= 1 for beam search, got {num_beams}")
    if strategy == "nucleus":
        if not 0 < top_p <= 1:
            raise UserError(f"top_p (--top-p) is a probability mass in (0, 1], got {top_p}")
        if not temperature > 0:
            raise UserError(f"temperature (--temperature) must be > 0, got {temperature}")
        if top_k < 0:
            raise UserError(f"top_k must be >= 0 (0 = off), got {top_k}")
    common = dict(max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id)
    if strategy == "greedy":
        return GenerationConfig(do_sample=False, num_beams=1, **common)
    if strategy == "beam":
        return GenerationConfig(do_sample=False, num_beams=num_beams, early_stopping=True,
                                length_penalty=length_penalty, **common)
    if strategy == "nucleus":
        return GenerationConfig(do_sample=True, num_beams=1, top_p=top_p, top_k=top_k, temperature=temperature, **common)
    raise ValueError(f"decoding strategy {strategy!r} is not one of ['greedy', 'beam', 'nucleus']")


@torch.no_grad()
def generate(model: nn.Module, tokenizer, prompts: Sequence[Prompt], *, strategy: Strategy = "greedy",
             max_new_tokens: int = 20, num_beams: int = 4, top_p: float = 0.9, top_k: int = 0,
             temperature: float = 1.0, length_penalty: float = 1.0, seed: int | None = None, batch_size: int = 64,
             image_transform: Callable | None = None) -> list[str]:
    """Continue each prompt; returns the generated text (up to end-of-text) of each.

    tokenizer: a ``FrozenTokenizer``. strategy: ``greedy``, ``beam`` (``num_beams``, ``length_penalty``) or
    ``nucleus`` (``top_p``, ``top_k`` (0 = off), ``temperature``; ``seed`` makes it reproducible without
    touching the global random state).
    """
    config = generation_config(tokenizer, strategy, max_new_tokens, num_beams, top_p, top_k, temperature, length_penalty)
    out: list[str] = []
    with eval_mode(model):
        with torch.random.fork_rng(devices=[] if _device(model).type != "cuda" else [_device(model)]):
            if seed is not None:
                torch.manual_seed(seed)
            for start in range(0, len(prompts), batch_size):
                chunk = prompts[start:start + batch_size]
                embeds, mask = embed_prompts(model, tokenizer, chunk, image_transform)
                _check_length(model, embeds.shape[1], max_new_tokens - 1)
                new_tokens = model.lm.generate(inputs_embeds=embeds, attention_mask=mask, generation_config=config)
                out += [tokenizer.decode(row) for row in new_tokens]
    return out


def _check_length(model: nn.Module, prompt_length: int, read_after: int, answer: str | None = None) -> None:
    """Refuse what the LM cannot read: the prompt and ``read_after`` more positions (all but the last
    generated token, or a scored answer and end-of-text). Past its positions it would fail with an
    IndexError deep inside (or extrapolate silently)."""
    limit = max_positions(model)
    if limit is None or prompt_length + read_after <= limit:
        return
    what = f"a prompt of {prompt_length} positions ({model.prefix_length} per image, 1 per text token)"
    if prompt_length >= limit:
        raise UserError(f"{what} fills the LM's {limit} positions: shorten the prompt (fewer images or words)")
    if answer is not None:
        raise UserError(f"{what} plus the answer {answer!r} exceeds the LM's {limit} positions: shorten the prompt")
    raise UserError(f"{what} plus max_new_tokens={read_after + 1} exceeds the LM's {limit} positions: "
                    f"use --max-new-tokens {limit - prompt_length + 1} or less, or shorten the prompt")


def caption(model: nn.Module, tokenizer, images: Sequence[PIL.Image.Image | torch.Tensor], prompt: str | None = None,
            **gen) -> list[str]:
    """Caption each image (optionally after a text ``prompt`` such as "A picture of")."""
    return generate(model, tokenizer, [[img] + ([prompt] if prompt else []) for img in images], **gen)


def answer(model: nn.Module, tokenizer, images: Sequence[PIL.Image.Image | torch.Tensor], questions: Sequence[str],
           template: str = "Q: {} A:", shots: Sequence[tuple[PIL.Image.Image | torch.Tensor, str, str]] = (),
           **gen) -> list[str]:
    """Visual question answering, zero-shot or with ``shots`` = (image, question, answer) examples first."""
    context: list[Part] = []
    for img, q, a in shots:
        context += [img, f"{template.format(q)} {a}"]
    answers = generate(model, tokenizer, [context + [img, template.format(q)] for img, q in zip(images, questions)],
                       **gen)
    # The template ends in "A:"; a model unsure of the answer may first repeat the colon.
    return [a.lstrip(": ").strip() for a in answers]


@torch.no_grad()
def score_continuations(model: nn.Module, tokenizer, prompts: Sequence[Prompt],
                        continuations: Sequence[Sequence[str]], image_transform: Callable | None = None) -> torch.Tensor:
    """Log-probability [B, K] of each of K continuations (plus end-of-text) after each prompt.

    Forced-choice evaluation: the model picks among given answers instead of generating freely.
    """
    scores = torch.zeros(len(prompts), max(len(c) for c in continuations))
    with eval_mode(model):
        for i, (prompt, options) in enumerate(zip(prompts, continuations)):
            embeds, mask = embed_prompts(model, tokenizer, [prompt], image_transform)
            for k, option in enumerate(options):
                ids = tokenizer.encode(" " + option) + [tokenizer.eos_id]
                _check_length(model, embeds.shape[1], len(ids), answer=option)   # reads the answer and EOS
                target = torch.tensor(ids, device=embeds.device)
                full = torch.cat([embeds[0], model.embed_tokens(target).to(embeds.dtype)])[None]
                logits = model.lm(inputs_embeds=full).logits[0, embeds.shape[1] - 1:-1].float()
                scores[i, k] = logits.log_softmax(-1).gather(1, target[:, None]).sum()
    return scores
