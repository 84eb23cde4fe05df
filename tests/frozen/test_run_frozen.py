"""`mmfm run` trains and evaluates a Frozen model from the same schema as CLIP (issue 15): the family supplies
objective, tokenizer and view; the runner's captioning / vqa kinds report on it; the saved model reloads."""
import json

import pytest
import torch
import yaml

from mmfm.cli import main
from mmfm.experiment import load_experiment, run_experiment

TRAIN = {"max_steps": 3, "batch_size": 8, "lr": 1e-3, "progress": False, "tensorboard": False, "device": "cpu"}


def _frozen_model(lm_dir, **extra):
    config = {"family": "frozen", "vision": {"kind": "modified_resnet", "image_size": 32, "width": 8,
                                             "layers": [1, 1, 1, 1], "head_width": 16},
              "vision_embed_dim": 32, "prefix_length": 2, "pretrained_lm": str(lm_dir), "context_length": 12}
    return {"label": "frozen", "config": config, "train": dict(TRAIN), **extra}


def _experiment(lm_dir, data, evals):
    return {"name": "frozen_tiny", "seed": 0, "device": "cpu", "val_data": None, "data": data,
            "models": [_frozen_model(lm_dir)], "evals": evals}


def _write(tmp_path, cfg):
    p = tmp_path / "exp.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _lm_state(lm_dir):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(str(lm_dir)).state_dict()


def test_frozen_run_on_shapes_trains_vision_only_reports_and_reloads(tmp_path, lm_dir, monkeypatch):
    from mmfm.frozen import caption, load_frozen
    from mmfm.frozen.family import FrozenFamily
    seen = {}
    save = FrozenFamily.save

    def spy(self, model, directory, tokenizer):     # the trained model, as the runner holds it
        seen["lm"] = {k: v.detach().clone() for k, v in model.lm.state_dict().items()}
        seen["vision"] = {k: v.detach().clone() for k, v in model.state_dict().items() if not k.startswith("lm.")}
        return save(self, model, directory, tokenizer)
    monkeypatch.setattr(FrozenFamily, "save", spy)

    data = {"train": {"name": "shapes", "args": {"split": "train", "size": 32, "image_size": 32}},
            "test": {"name": "shapes", "args": {"split": "test", "size": 8, "image_size": 32}}}
    evals = [{"kind": "captioning", "args": {"n": 4, "max_new_tokens": 5}}, {"kind": "vqa", "args": {"n": 3}}]
    out = tmp_path / "run"
    assert main(["run", str(_write(tmp_path, _experiment(lm_dir, data, evals))), "--out", str(out)]) == 0

    before = _lm_state(lm_dir)
    assert seen["lm"].keys() == before.keys() and all(torch.equal(seen["lm"][k], before[k]) for k in before)
    report = json.loads((out / "report.json").read_text())
    metrics = report["models"][0]["metrics"]
    assert {"captioning CIDEr-D", "captioning BLEU-4", "vqa accuracy"} <= set(metrics)
    results = json.loads((out / "results.json").read_text())["results"]
    cap = next(r for r in results if r["kind"] == "captioning")
    assert cap["num_images"] == 4 and cap["config"]["strategy"] == "greedy" and "protocol" not in cap["config"]
    vqa = next(r for r in results if r["kind"] == "vqa")
    assert vqa["num_questions"] == 6 and 0.0 <= vqa["accuracy"] <= 1.0

    model, tok = load_frozen(out / "frozen" / "model")
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in seen["vision"].items())     # what was trained, was saved
    from mmfm.data import get_dataset
    test = get_dataset("shapes", split="test", size=8, image_size=32)
    again = [caption(model, tok, [test[i].image], max_new_tokens=5)[0] for i in range(4)]
    assert again == [e["caption"] for e in cap["examples"]]


def test_frozen_run_trains_from_a_caption_folder(tmp_path, lm_dir):
    """Any caption source: a CSV folder (data/custom.py's format) for training and captioning; no VQA there."""
    from PIL import Image
    folder = tmp_path / "captions"
    (folder / "images").mkdir(parents=True)
    rows = ["path,caption"]
    colours = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30)}
    for i in range(12):
        name, rgb = list(colours.items())[i % 3]
        Image.new("RGB", (40, 40), rgb).save(folder / "images" / f"{i}.png")
        rows += [f"images/{i}.png,a {name} square", f"images/{i}.png,there is a {name} square"]
    (folder / "captions.csv").write_text("\n".join(rows) + "\n")
    data = {"train": {"name": "custom", "args": {"root": str(folder)}},
            "test": {"name": "custom", "args": {"root": str(folder)}}}
    cfg = _experiment(lm_dir, data, [{"kind": "captioning", "args": {"n": 3, "max_new_tokens": 4}}])
    out = tmp_path / "run"
    assert main(["run", str(_write(tmp_path, cfg)), "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())["results"]
    assert [r["kind"] for r in results] == ["captioning"] and results[0]["num_images"] == 3
    assert results[0]["examples"][0]["references"] == ["a red square", "there is a red square"]

    for kind in ("vqa", "binding"):
        cfg["evals"] = [{"kind": kind}]
        with pytest.raises(ValueError, match=f"evaluation {kind}: .*provides no scenes with questions.*shapes"):
            run_experiment(load_experiment(_write(tmp_path, cfg)), tmp_path / "run2")
        assert not (tmp_path / "run2" / "frozen").exists()       # refused before training, not after


def test_frozen_spec_errors_name_the_field(tmp_path, lm_dir):
    data = {"train": {"name": "shapes", "args": {"split": "train", "size": 8, "image_size": 32}}}
    cfg = _experiment(lm_dir, data, [])
    cfg["models"][0]["config"]["prefix_lenght"] = 3
    with pytest.raises(ValueError, match=r"models\.0.*config: .*prefix_lenght.*allowed keys"):
        load_experiment(_write(tmp_path, cfg))
    cfg = _experiment(lm_dir, data, [])
    cfg["models"][0]["lora"] = "attn"
    with pytest.raises(ValueError, match="lora: LoRA applies to CLIP-family models"):
        load_experiment(_write(tmp_path, cfg))
    cfg = _experiment(lm_dir, data, [])
    cfg["models"][0] = {"label": "clip", "model": "ViT-tiny-test", "tokenizer": str(lm_dir)}
    with pytest.raises(ValueError, match="tokenizer: only Frozen and causal_lm models"):
        load_experiment(_write(tmp_path, cfg))


def test_an_evaluation_the_family_cannot_run_fails_before_training(tmp_path, lm_dir):
    data = {"train": {"name": "shapes", "args": {"split": "train", "size": 8, "image_size": 32}},
            "test": {"name": "shapes", "args": {"split": "test", "size": 4, "image_size": 32}}}
    cfg = _experiment(lm_dir, data, [{"kind": "zeroshot", "task": "shape"}])
    with pytest.raises(ValueError, match=r"models\.0 \(frozen\): evaluation zeroshot does not apply to a 'frozen'"):
        run_experiment(load_experiment(_write(tmp_path, cfg)), tmp_path / "run")
    cfg["models"] = [{"label": "clip", "model": "ViT-tiny-test", "train": dict(TRAIN)}]
    cfg["evals"] = [{"kind": "captioning"}]
    with pytest.raises(ValueError, match="evaluation captioning does not apply to a 'clip'"):
        run_experiment(load_experiment(_write(tmp_path, cfg)), tmp_path / "run2")
    assert not (tmp_path / "run" / "frozen").exists() and not (tmp_path / "run2" / "clip").exists()


def test_clip_kinds_refuse_a_frozen_model_and_frozen_kinds_a_clip_model(tiny_model):
    from mmfm.api import create_model
    from mmfm.data import get_dataset
    from mmfm.evaluate import evaluate
    test = get_dataset("shapes", split="test", size=4, image_size=32)
    with pytest.raises(ValueError, match="zeroshot needs a CLIP-family model"):
        evaluate("zeroshot", tiny_model, test, task="shape")
    with pytest.raises(ValueError, match="captioning needs a Frozen model"):
        evaluate("captioning", create_model("ViT-tiny-test"), test)
