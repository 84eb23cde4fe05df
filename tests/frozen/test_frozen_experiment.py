"""The Frozen shapes experiment (experiments/frozen_shapes/config.yaml) through `mmfm run`, at tiny sizes."""
import json
from pathlib import Path

import pytest
import yaml

from mmfm.cli import main
from mmfm.experiment import load_experiment, run_experiment

CONFIG = Path(__file__).resolve().parents[2] / "experiments" / "frozen_shapes" / "config.yaml"
TINY = ["data.corpus.args.documents=300", "data.corpus.args.size=200", "data.train.args.size=200",
        "data.val.args.size=16", "data.test.args.size=40",
        "models.0.train.max_steps=4", "models.0.train.batch_size=8", "models.0.config.lm.n_embd=16",
        "models.0.config.lm.n_layer=1", "models.0.config.lm.n_positions=64",
        "models.1.train.max_steps=2", "models.1.train.batch_size=16",
        "models.2.train.max_steps=2", "models.2.train.batch_size=8", "models.2.train.warmup_steps=1",
        "models.2.evals.0.args.n=6", "models.2.evals.1.args.n=4", "models.2.evals.2.args.n=5",
        "models.2.evals.3.args.n=4", "models.2.evals.4.args.n=5"]


def test_frozen_shapes_experiment_end_to_end_tiny(tmp_path):
    summary = run_experiment(CONFIG, tmp_path / "run", overrides=TINY)
    rows = {r["label"]: r for r in summary["models"]}
    assert list(rows) == ["lm", "clip", "frozen"]
    assert rows["lm"]["train"]["steps"] == 4 and rows["clip"]["train"]["steps"] == 2
    frozen = rows["frozen"]
    assert frozen["params"]["frozen"] > 0 and frozen["params"]["trainable"] > 0      # the LM stayed frozen
    kinds = [e["kind"] for e in frozen["evaluations"]]
    assert kinds == ["captioning", "vqa", "binding", "vqa", "binding"]
    cap, vqa, bind, vqa_text, bind_text = frozen["evaluations"]
    assert cap["config"]["blind_baseline"]["caption"] and "CIDEr-D" in cap["config"]["blind_baseline"]
    assert vqa["config"]["baseline_answers"] == "the training images" and vqa_text["config"]["as_text"]
    assert bind["n_episodes"] == 5 and bind["chance"] == 0.5 and bind_text["config"]["as_text"]
    assert bind["config"]["seed"] == 0                                   # episodes drawn from the run's seed
    for tag in ("captioning CIDEr-D", "vqa accuracy", "binding open_ended", "binding text-only forced_choice",
                "vqa text-only accuracy"):
        assert tag in frozen["metrics"]
    # the Frozen model read the LM and tokenizer the first model saved, and the CLIP's image tower
    resolved = yaml.safe_load((tmp_path / "run" / "config.resolved.yaml").read_text())
    assert resolved["models"][2]["config"]["pretrained_lm"] == "@lm"
    saved = json.loads((tmp_path / "run" / "frozen" / "model" / "config.json").read_text())
    assert Path(saved["config"]["pretrained_lm"]) == (tmp_path / "run" / "lm" / "model").resolve()


def _write(tmp_path, edit):
    raw = yaml.safe_load(CONFIG.read_text())
    edit(raw)
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("edit, message", [
    (lambda r: r["models"][2]["config"].update(pretrained_lm="@nope"), "'@nope' names no earlier trained model"),
    (lambda r: r["models"].insert(0, r["models"].pop(2)), "'@lm' names no earlier trained model"),
    (lambda r: r["models"][2]["options"].update(prefix_weigth=1), "options: prefix_weigth: Extra inputs"),
    (lambda r: r["models"][2]["options"].update(prefix_targets=9), "prefix_targets \\(9\\) cannot exceed"),
    (lambda r: r["models"][1].update(options={"prefix_weight": 1}), "family takes no options"),
    (lambda r: r["models"][0].update(train_data="nope"), "models.0.train_data: 'nope' is not a key of data"),
    (lambda r: r["models"][2]["evals"].append({"kind": "zeroshot"}), "evaluation zeroshot does not apply"),
])
def test_bad_experiment_configs_fail_in_one_line_before_anything_runs(tmp_path, capsys, edit, message):
    path = _write(tmp_path, edit)
    if "zeroshot" in message:       # checked against the data, when the run starts, still before any training
        with pytest.raises(ValueError, match=message):
            run_experiment(path, tmp_path / "run", overrides=TINY)
        assert not (tmp_path / "run" / "lm").exists()
        return
    with pytest.raises(ValueError, match=message):
        load_experiment(path)
    assert main(["run", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err


def test_binding_needs_scenes_and_two_words(tmp_path):
    from mmfm.data import get_dataset
    from mmfm.frozen.evals import binding
    from mmfm.api import create_model
    from mmfm.models.frozen import FrozenConfig
    model = create_model(FrozenConfig(vision={"kind": "modified_resnet", "image_size": 32, "width": 8,
                                              "layers": [1, 1, 1, 1], "head_width": 8},
                                      lm={"vocab_size": 20, "n_embd": 16, "n_layer": 1, "n_head": 2},
                                      prefix_length=2))
    with pytest.raises(ValueError, match="two different words"):
        binding(model, get_dataset("shapes", split="test", size=20, image_size=32), words=["dax", "dax"])


def test_vision_init_copies_a_clip_image_tower_and_rejects_another_shape(tiny_config, tmp_path):
    import torch

    from mmfm.api import create_model
    from mmfm.checkpoints import save_pretrained
    from mmfm.frozen.family import init_vision
    clip = create_model("RN-tiny-test")
    save_pretrained(clip, tmp_path / "clip")
    with pytest.raises(ValueError, match=r"options.vision_init: .*the Frozen config's vision is .*width=8"):
        init_vision(create_model(tiny_config), str(tmp_path / "clip"))   # a narrower tower than the CLIP's
    tiny_config.vision = clip.config.vision
    tiny_config.vision_embed_dim = clip.config.embed_dim
    model = create_model(tiny_config)
    init_vision(model, str(tmp_path / "clip"))
    for (name, a), b in zip(model.visual.state_dict().items(), clip.visual.state_dict().values()):
        assert torch.equal(a, b), name
