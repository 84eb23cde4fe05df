"""Generation from interleaved image-text prompts: strategies, left padding, the tokenizer adapter."""
from __future__ import annotations

import PIL.Image
import pytest
import torch

from mmfm.frozen.generate import embed_prompts, generate, score_continuations
from mmfm.frozen.text import attention_mask_from_ids


def _images(n=3):
    return [PIL.Image.new("RGB", (40, 40), (40 * k, 200 - 50 * k, 90)) for k in range(n)]


def test_interleaved_prompt_layout(tiny_model, tokenizer):
    a, b, q = _images()
    tiny_model.eval()    # BatchNorm with running statistics: an image's prefix does not depend on its batch
    prompt = [a, "This is a dax.", b, "This is a blicket.", q, "Q: What is this? A:"]
    embeds, mask = embed_prompts(tiny_model, tokenizer, [prompt, [q]])
    text_tokens = sum(len(tokenizer.encode(p)) for p in prompt if isinstance(p, str))
    length = 3 * tiny_model.prefix_length + text_tokens
    assert embeds.shape == (2, length, tiny_model.embed_dim)
    assert mask[0].all() and mask[1].sum() == tiny_model.prefix_length
    assert not mask[1, :length - tiny_model.prefix_length].any()          # left padding
    # The image slots hold exactly the visual prefix of those images.
    from mmfm.frozen.generate import default_image_transform
    prefix = tiny_model.embed_images(default_image_transform(tiny_model)(a)[None])[0]
    torch.testing.assert_close(embeds[0, :tiny_model.prefix_length], prefix)


def test_strategies_and_batching(tiny_model, tokenizer):
    a, b, q = _images()
    prompts = [[a, "This is a"], [b], [a, "Q: what colour is it? A:", q, "Q: what colour is it? A:"]]
    greedy = generate(tiny_model, tokenizer, prompts, max_new_tokens=4)
    assert len(greedy) == 3 and all(isinstance(t, str) for t in greedy)
    # Left-padded batch = each prompt alone.
    assert greedy == [generate(tiny_model, tokenizer, [p], max_new_tokens=4)[0] for p in prompts]
    beams = generate(tiny_model, tokenizer, prompts, strategy="beam", num_beams=3, max_new_tokens=4)
    assert len(beams) == 3
    s1 = generate(tiny_model, tokenizer, prompts, strategy="nucleus", top_p=0.9, seed=3, max_new_tokens=4)
    s2 = generate(tiny_model, tokenizer, prompts, strategy="nucleus", top_p=0.9, seed=3, max_new_tokens=4)
    assert s1 == s2
    with pytest.raises(ValueError, match="strategy"):
        generate(tiny_model, tokenizer, prompts, strategy="top-k")
    tiny_model.train()
    generate(tiny_model, tokenizer, prompts[:1], max_new_tokens=2)
    assert tiny_model.training and tiny_model.visual.training     # generation restores the mode it found


def test_forced_choice_scores(tiny_model, tokenizer):
    a, b, q = _images()
    scores = score_continuations(tiny_model, tokenizer, [[a, "This is a dax.", q, "Q: What is this? A:"]],
                                 [["dax", "blicket"]])
    assert scores.shape == (1, 2) and (scores < 0).all()


def test_tokenizer_adapter(tokenizer):
    ids = tokenizer(["a red circle", "a"])
    assert ids.shape == (2, 12) and ids.dtype == torch.long
    assert ids[0, 3] == tokenizer.eos_id and (ids[0, 4:] == tokenizer.pad_id).all()
    assert tokenizer.decode(ids[0]) == "a red circle"
    long = tokenizer(["a " * 30])
    assert long.shape == (1, 12) and tokenizer.eos_id not in long[0].tolist()   # truncated: no false stop


def test_attention_mask_when_padding_is_end_of_text():
    # GPT-2 style: pad id == eos id; the first EOS is real, the rest is padding.
    eos = 9
    ids = torch.tensor([[3, 4, eos, eos, eos], [3, 4, 5, 6, 7]])
    assert attention_mask_from_ids(ids, eos, eos).tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert attention_mask_from_ids(ids, 0, eos).tolist() == [[1] * 5, [1] * 5]
