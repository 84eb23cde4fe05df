"""The embedded demonstration runs end to end (tiny settings) and writes its report, figure and model."""
from __future__ import annotations

import json

from mmfm.data.shapes_text import binding_text, nonsense_words, text_corpus
from mmfm.frozen.demo import load_demo_config, run_demo


def test_text_corpus_is_text_only_and_binds_words_at_random():
    from mmfm.data import Shapes
    ds = Shapes("train", size=200)
    words = nonsense_words(8)
    docs = text_corpus(ds, 200, words, seed=0, mix={"binding": 1.0})
    assert all(isinstance(d, str) and "This is a" in d and "Q: What is this? A:" in d for d in docs)
    first_words = {d.split("This is a ")[1].split(".")[0] for d in docs}
    assert first_words <= set(words) and len(first_words) > 2
    assert binding_text(["red circle", "blue star"], ["dax", "wug"], ["green circle"], ["dax"]) == \
        "red circle This is a dax. blue star This is a wug. green circle Q: What is this? A: dax"


def test_direct_binding_template_puts_the_word_after_the_thing_and_ends_on_the_query():
    import pytest
    from mmfm.data import Shapes
    from mmfm.frozen.tasks import binding_episodes, binding_prompt
    assert binding_text(["red circle", "blue star"], ["dax", "wug"], ["green circle", "pink star"], ["dax", "wug"],
                        template="direct") == "red circle dax. blue star wug. green circle dax pink star wug"
    ds = Shapes("train", size=200)
    docs = text_corpus(ds, 50, nonsense_words(8), seed=0, mix={"binding": 1.0}, template="direct")
    assert not any("This is a" in d or "Q:" in d for d in docs)
    with pytest.raises(ValueError, match="unknown binding template 'fancy'"):
        text_corpus(ds, 5, nonsense_words(8), mix={"binding": 1.0}, template="fancy")
    episode = binding_episodes(ds, 1)[0]
    prompt = binding_prompt(ds, episode, template="direct")
    assert prompt[1] == f"{episode['words'][0]}." and prompt[3] == f"{episode['words'][1]}."
    assert len(prompt) == 5 and not isinstance(prompt[-1], str)          # ends on the query image
    text_prompt = binding_prompt(ds, episode, as_text=True, template="paper")
    assert text_prompt[-1] == "Q: What is this? A:" and text_prompt[1] == f"This is a {episode['words'][0]}."


def test_demo_end_to_end_tiny(tmp_path):
    cfg = load_demo_config(None, {
        "image_size": 32, "train_size": 64, "test_size": 16, "threads": 1,
        "lm.n_embd": 32, "lm.n_layer": 1, "lm.n_head": 2, "lm.documents": 300, "lm.steps": 4, "lm.batch_size": 8,
        "lm.nonsense_words": 6,
        "frozen.vision": {"kind": "modified_resnet", "image_size": 32, "width": 8, "layers": [1, 1, 1, 1],
                          "head_width": 16},
        "frozen.vision_embed_dim": 32, "frozen.steps": 3, "frozen.batch_size": 4, "frozen.context_length": 12,
        "frozen.vqa_fraction": 0.5, "frozen.prefix_weight": 1.0, "frozen.prefix_targets": 3,
        "vision_pretrain": {"model": "RN-tiny-test", "steps": 2, "batch_size": 8}, "eval_captions": 4, "eval_vqa_images": 3, "eval_binding": 4, "samples_png": 4,
    })
    results = run_demo(tmp_path, cfg)
    for name in ("results.json", "results.md", "samples.png", "model/config.json", "model/model.safetensors",
                 "lm/config.json", "lm/tokenizer.json"):
        assert (tmp_path / name).is_file(), name
    saved = json.loads((tmp_path / "results.json").read_text())
    assert set(saved["captioning"]) >= {"BLEU-1", "BLEU-4", "CIDEr-D"}
    assert 0 <= saved["vqa"]["accuracy"] <= 1 and saved["binding"]["chance"] == 0.5
    m = saved["measurements"]
    assert m["lm_unchanged_after_training"] is True
    assert m["parameters"]["per_tower"]["lm"]["trainable"] == 0
    assert m["latency_per_caption_ms"]["greedy"] > 0 and m["frozen_train"]["train_time_s"] > 0
    assert "| few-shot binding" in (tmp_path / "results.md").read_text()
    assert results["binding"]["n_episodes"] == 4
    # The vision encoder started from the pretrained CLIP's image tower (its config replaced frozen.vision).
    assert m["vision_pretrain"]["steps"] == 2 and (tmp_path / "clip/model/model.safetensors").is_file()
    frozen_cfg = json.loads((tmp_path / "model/config.json").read_text())["config"]
    assert frozen_cfg["vision"]["width"] == 16 and frozen_cfg["vision_embed_dim"] == 32
    assert "vision pretraining time (CLIP)" in (tmp_path / "results.md").read_text()


def test_vision_init_copies_a_clip_image_tower_and_rejects_another_shape(tiny_config, tmp_path):
    import pytest
    import torch

    from mmfm.checkpoints import save_pretrained
    from mmfm.frozen.demo import _init_vision
    from mmfm.api import create_model
    clip = create_model("RN-tiny-test")
    save_pretrained(clip, tmp_path / "clip")
    with pytest.raises(ValueError, match=r"frozen.vision_init: .*frozen.vision is .*width=8"):
        _init_vision(create_model(tiny_config), str(tmp_path / "clip"))   # a narrower tower than the CLIP's
    tiny_config.vision = clip.config.vision
    model = create_model(tiny_config)
    _init_vision(model, str(tmp_path / "clip"))
    for (name, a), b in zip(model.visual.state_dict().items(), clip.visual.state_dict().values()):
        assert torch.equal(a, b), name


def test_demo_run_takes_the_run_folder_lock(tmp_path, capsys):
    """`mmfm run` of the Frozen demo holds the same folder lock as every run: a second one stops at once."""
    from mmfm.cli import main
    from mmfm.experiment import run_lock
    config = tmp_path / "demo.yaml"
    config.write_text("frozen_demo:\n  name: tiny\n  threads: 1\n")
    out = tmp_path / "out"
    with run_lock(out):
        assert main(["run", str(config), "--out", str(out)]) == 2
    assert "in use by another `mmfm run`" in capsys.readouterr().err
