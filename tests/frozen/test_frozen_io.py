"""Saving / loading a trained Frozen model, and the functions behind `mmfm caption` / `mmfm vqa`."""
from __future__ import annotations

import json

import PIL.Image
import torch

from mmfm.frozen.cli import add_caption_parser, add_vqa_parser, caption_files, vqa_files
from mmfm.frozen.generate import caption
from mmfm.frozen.io import load_frozen, save_frozen


def test_save_load_round_trip(tiny_model, tokenizer, tmp_path):
    with torch.no_grad():
        tiny_model.mapper.bias.add_(0.5)                      # make sure trained weights are what is saved
    save_frozen(tiny_model, tmp_path / "model", tokenizer)
    meta = json.loads((tmp_path / "model" / "config.json").read_text())
    assert meta["family"] == "frozen" and meta["config"]["pretrained_lm"]
    loaded, tok = load_frozen(tmp_path / "model")
    assert tok is not None and tok.eos_id == tokenizer.eos_id
    tiny_model.eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded.embed_images(x), tiny_model.embed_images(x))
    for (n, p), (_, q) in zip(tiny_model.lm.named_parameters(), loaded.lm.named_parameters()):
        assert torch.equal(p, q), n
    # The generic loader reads it too.
    from mmfm.api import from_pretrained
    generic = from_pretrained(tmp_path / "model")
    torch.testing.assert_close(generic.eval().embed_images(x), tiny_model.embed_images(x))


def test_cli_functions(tiny_model, tokenizer, tmp_path):
    save_frozen(tiny_model, tmp_path / "model", tokenizer)
    paths = []
    for k in range(2):
        paths.append(tmp_path / f"img{k}.png")
        PIL.Image.new("RGB", (48, 48), (200, 30 * k, 30)).save(paths[-1])
    out = caption_files(tmp_path / "model", paths, max_new_tokens=5, device="cpu")
    assert [p for p, _ in out] == [str(p) for p in paths]
    tiny_model.eval()
    assert [c for _, c in out] == caption(tiny_model, tokenizer, [PIL.Image.open(p).convert("RGB") for p in paths],
                                          max_new_tokens=5)
    answer = vqa_files(tmp_path / "model", paths[0], "what colour is it?", strategy="beam", num_beams=2, device="cpu")
    assert isinstance(answer, str)


def test_argparse_helpers():
    import argparse
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    add_caption_parser(sub)
    add_vqa_parser(sub)
    args = parser.parse_args(["caption", "DIR", "a.png", "b.png", "--strategy", "beam"])
    assert args.images == ["a.png", "b.png"] and args.strategy == "beam" and callable(args.func)
    args = parser.parse_args(["vqa", "DIR", "a.png", "what shape is this?", "--max-new-tokens", "3"])
    assert args.question == "what shape is this?" and args.max_new_tokens == 3
