"""`mmfm run`: config validation errors and a tiny end-to-end experiment."""
import json

import pytest
import yaml

from mmfm.cli import main
from mmfm.experiment import load_experiment, run_experiment

TINY = {
    "name": "tiny",
    "data": {"train": {"name": "shapes", "args": {"split": "train", "size": 256, "image_size": 32}},
             "val": {"name": "shapes", "args": {"split": "val", "size": 32, "image_size": 32}},
             "test": {"name": "shapes", "args": {"split": "test", "size": 64, "image_size": 32}}},
    "models": [{"label": "tiny", "model": "ViT-tiny-test",
                "train": {"max_steps": 3, "batch_size": 16, "lr": 1e-3, "progress": False, "tensorboard": False}}],
    "evals": [{"kind": "zeroshot", "task": "shape"}, {"kind": "zeroshot", "task": "color"}, {"kind": "retrieval"}],
}


def _write(tmp_path, cfg):
    p = tmp_path / "exp.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_unknown_key_names_key_and_allowed_values(tmp_path):
    cfg = json.loads(json.dumps(TINY))
    cfg["models"][0]["train"]["learning_rate"] = 0.1
    with pytest.raises(ValueError) as e:
        load_experiment(_write(tmp_path, cfg))
    msg = str(e.value)
    assert "models.0.train.learning_rate" in msg and "unknown key" in msg and "'lr'" in msg


def test_wrong_type_and_bad_choice_are_clear(tmp_path):
    cfg = json.loads(json.dumps(TINY))
    cfg["models"][0]["train"]["batch_size"] = "many"
    cfg["evals"][0]["kind"] = "zero-shot-ish"
    with pytest.raises(ValueError) as e:
        load_experiment(_write(tmp_path, cfg))
    msg = str(e.value)
    assert "models.0.train.batch_size" in msg and "evals.0.kind" in msg and "zeroshot" in msg


def test_cli_reports_config_errors_without_traceback(tmp_path, capsys):
    cfg = json.loads(json.dumps(TINY))
    cfg["modles"] = []
    assert main(["run", str(_write(tmp_path, cfg))]) == 2
    err = capsys.readouterr().err
    assert "modles" in err and "Traceback" not in err


def test_overrides_apply_before_validation(tmp_path):
    cfg = load_experiment(_write(tmp_path, TINY), overrides=["models.0.train.lr=0.5", "seed=3"])
    assert cfg.models[0].train.lr == 0.5 and cfg.seed == 3


@pytest.mark.slow
def test_tiny_experiment_end_to_end(tmp_path):
    summary = run_experiment(_write(tmp_path, TINY), out_dir=tmp_path / "out")
    out = tmp_path / "out"
    for f in ("report.md", "report.json", "results.json", "results.md", "config.resolved.yaml",
              "tiny/curves.png", "tiny/metrics.jsonl", "tiny/model/model.safetensors"):
        assert (out / f).is_file(), f
    row = summary["models"][0]
    assert row["train"]["steps"] == 3 and row["train"]["samples_seen"] == 48
    assert {"zeroshot[shape] top1", "zeroshot[color] top1", "retrieval i2t_R@1"} <= set(row["metrics"])
    assert 0.0 <= row["metrics"]["zeroshot[shape] top1"] <= 1.0
    assert row["params"]["total"] == row["params"]["trainable"] > 0
    lat = row["train"]["latency"]["batch_1"]
    assert lat["n"] > 0 and lat["p50_ms"] > 0
    report = (out / "report.md").read_text()
    assert "Measurements" in report and "tiny" in report


@pytest.mark.parametrize("path", sorted(__import__("pathlib").Path(__file__).parents[1].glob("configs/*.yaml")),
                         ids=lambda p: p.name)
def test_bundled_configs_validate(path):
    if "frozen_demo" in yaml.safe_load(path.read_text()):
        from mmfm.frozen.demo import load_demo_config
        load_demo_config(path)
        return
    cfg = load_experiment(path)
    from mmfm.models import get_model_config
    for m in cfg.models:
        if m.model:
            get_model_config(m.model)   # every referenced model config exists
