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


# ------------------------------------------------------------------------------------------
# Bad values and prompts: one clear error each, before the LM fails obscurely.
@pytest.mark.parametrize("kwargs, match", [
    (dict(strategy="beam", num_beams=0), "num_beams"),
    (dict(strategy="nucleus", top_p=5.0), "top_p"),
    (dict(strategy="nucleus", top_p=0.0), "top_p"),
    (dict(strategy="nucleus", temperature=0.0), "temperature"),
    (dict(max_new_tokens=0), "max_new_tokens"),
])
def test_decoding_values_out_of_range_are_refused_by_name(tiny_model, tokenizer, kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate(tiny_model, tokenizer, [_images(1)], **kwargs)


def test_prompt_and_new_tokens_beyond_the_lms_positions(tiny_model, tokenizer):
    limit = tiny_model.lm.config.n_positions                  # 64 in the tiny LM
    words = "a red circle " * 30                              # 90 text tokens
    with pytest.raises(ValueError, match=f"fills the LM's {limit} positions"):
        generate(tiny_model, tokenizer, [[_images(1)[0], words]], max_new_tokens=2)
    prompt = [_images(1)[0], "a red circle " * 18]            # 2 + 54 = 56 positions
    length = tiny_model.prefix_length + 54
    with pytest.raises(ValueError, match=f"--max-new-tokens {limit - length + 1} or less"):
        generate(tiny_model, tokenizer, [prompt], max_new_tokens=20)
    # the largest allowed value runs to the last position without an IndexError (end-of-text can never
    # be drawn: its logit is pushed down, so all max_new_tokens tokens are generated)
    handle = tiny_model.lm.register_forward_hook(_forbid(tokenizer.eos_id))
    try:
        out = generate(tiny_model, tokenizer, [prompt], max_new_tokens=limit - length + 1)
    finally:
        handle.remove()
    assert len(tokenizer.encode(out[0])) == limit - length + 1


def test_forced_choice_beyond_the_lms_positions(tiny_model, tokenizer):
    prompt = [_images(1)[0], "a red circle " * 20]           # 2 + 60 = 62 positions of 64
    assert score_continuations(tiny_model, tokenizer, [prompt], [["red"]]).shape == (1, 1)   # + "red" + eos = 64
    with pytest.raises(ValueError, match="plus the answer 'red'"):
        score_continuations(tiny_model, tokenizer, [prompt + ["a"]], [["red"]])           # 65


def _forbid(token_id):
    def hook(module, inputs, output):
        output.logits[..., token_id] = -1e4
        return output
    return hook


def test_unknown_spelling_is_replaced_by_the_one_the_lm_knows(tiny_model, tokenizer):
    """The tiny tokenizer, like the demo's, learned "colour" only: "color" would be <unk>."""
    unk = tokenizer.tokenizer.unk_token_id
    assert unk in tokenizer.encode("what color is it?") and unk not in tokenizer.encode("what colour is it?")
    tiny_model.eval()
    image = _images(1)[0]
    american, _ = embed_prompts(tiny_model, tokenizer, [[image, "Q: what color is it? A:"]])
    british, _ = embed_prompts(tiny_model, tokenizer, [[image, "Q: what colour is it? A:"]])
    torch.testing.assert_close(american, british)


def test_answers_do_not_start_with_the_templates_colon(tiny_model, tokenizer):
    from mmfm.frozen.generate import answer
    script = [tokenizer.encode(":")[0], tokenizer.encode(":")[0], tokenizer.encode("red")[0], tokenizer.eos_id]
    step = iter(range(len(script)))

    def scripted(module, inputs, output):       # the LM says ": : red" then stops
        output.logits[:, -1] = -1e4
        output.logits[:, -1, script[next(step)]] = 0.0
        return output
    handle = tiny_model.lm.register_forward_hook(scripted)
    try:
        assert answer(tiny_model, tokenizer, _images(1), ["what colour is it?"], max_new_tokens=5) == ["red"]
    finally:
        handle.remove()
