"""benchmarks/seeds.py: the README's figures are means +- std over seeds of `mmfm run` configs."""
import json
import subprocess

import pytest
import seeds as S
import yaml
from conftest import CONFIGS


def test_mean_std_is_the_sample_std():
    s = S.mean_std([0.1, 0.2, 0.3])
    assert s["mean"] == pytest.approx(0.2) and s["std"] == pytest.approx(0.1) and s["n"] == 3
    assert S.mean_std([5.0])["std"] == 0.0
    assert S.fmt(s, 100) == "20.0 +- 10.0"


def test_a_gap_counts_only_beyond_the_spread():
    a, b = S.mean_std([10, 11, 12]), S.mean_std([13, 14, 15])     # gap 3 > 1 + 1
    assert S.separated(a, b) and S.separated(b, a)
    c = S.mean_std([11, 13, 15])                                   # gap 1 < 1 + 2
    assert not S.separated(a, c)


def test_a_quickstart_seed_draws_init_order_and_training_images_but_not_the_test_set():
    config = CONFIGS / "quickstart.yaml"
    raw = yaml.safe_load(config.read_text())
    r0 = S.resolved_config(config, S.seed_overrides(raw, 0))
    r2 = S.resolved_config(config, S.seed_overrides(raw, 2))
    assert r2["seed"] == 2 and r2["models"][0]["train"]["seed"] == 2 and r2["data"]["train"]["args"]["seed"] == 2
    assert r0["data"]["test"] == r2["data"]["test"] and r0["data"]["val"] == r2["data"]["val"]
    # seed 0 is the config as shipped (shapes' and the trainer's default seed is 0): `mmfm run
    # configs/quickstart.yaml` is seed 0 of the table
    from mmfm.data.shapes import Shapes
    from mmfm.experiment import load_experiment
    shipped = load_experiment(config).model_dump(mode="json")
    assert {**r0, "data": None} == {**shipped, "data": None}
    assert r0["data"]["train"]["args"] == {**shipped["data"]["train"]["args"], "seed": 0} and Shapes().seed == 0


def test_a_frozen_experiment_seed_draws_everything_its_datasets_name_a_seed_for():
    config = CONFIGS.parent / "experiments" / "frozen_shapes" / "config.yaml"
    raw = yaml.safe_load(config.read_text())
    r2 = S.resolved_config(config, S.seed_overrides(raw, 2))
    assert r2["seed"] == 2 and [m["train"]["seed"] for m in r2["models"]] == [2, 2, 2]
    assert {k: d["args"]["seed"] for k, d in r2["data"].items()} == {"corpus": 2, "train": 2, "val": 2, "test": 2}
    assert S.resolved_config(config, S.seed_overrides(raw, 0)) == S.resolved_config(config, [])   # 0 = as shipped


def test_generative_figures_and_their_baselines_are_aggregated():
    result = {"models": [{"label": "frozen", "metrics": {"binding open_ended": 0.5}, "train": {"wall_time_s": 3.0},
                          "evaluations": [
                              {"kind": "captioning", "config": {"tag": "captioning", "blind_baseline": {
                                  "caption": "a circle", "CIDEr-D": 0.2}}, "metrics": {"CIDEr-D": 3.0}},
                              {"kind": "vqa", "config": {"tag": "vqa text-only"}, "accuracy": 1.0,
                               "per_question": {"what shape is this?": 1.0}, "examples": [{"answer": 1}]}]}]}
    flat = S.headline(result)
    assert flat["frozen/captioning/metrics/CIDEr-D"] == 3.0 and flat["frozen/captioning/blind_baseline/CIDEr-D"] == 0.2
    assert flat["frozen/vqa text-only/per_question/what shape is this?"] == 1.0
    assert flat["frozen/binding open_ended"] == 0.5 and not any("examples" in k for k in flat)


def _store_seed(config, seed_dir, sets, metrics):
    seed_dir.mkdir(parents=True)
    (seed_dir / "config.resolved.yaml").write_text(yaml.safe_dump(S.resolved_config(config, sets)))
    (seed_dir / "report.json").write_text(json.dumps(
        {"name": "quickstart", "models": [{"label": "clip", "metrics": metrics, "train": {"wall_time_s": 10.0}}]}))


def test_a_stored_seed_is_reused_only_if_made_from_the_same_config(tmp_path, monkeypatch):
    config = CONFIGS / "quickstart.yaml"
    raw = yaml.safe_load(config.read_text())
    _store_seed(config, tmp_path / "seed0", S.seed_overrides(raw, 0), {"top1": 0.9})
    _store_seed(config, tmp_path / "seed1", S.seed_overrides(raw, 0), {"top1": 0.8})   # seed 0's config in seed1/
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    result, reused = S.run_seed(config, 0, tmp_path, threads=1)
    assert reused and result["models"][0]["metrics"]["top1"] == 0.9 and not calls
    # another config's folder: refused, not resumed from or overwritten
    assert S.main([str(config), "--seeds", "1", "--out", str(tmp_path)]) == 2 and not calls
    assert json.loads((tmp_path / "seed1" / "report.json").read_text())["models"][0]["metrics"]["top1"] == 0.8


def test_a_seed_that_stopped_early_runs_again_in_place(tmp_path, monkeypatch):
    config = CONFIGS / "quickstart.yaml"
    raw = yaml.safe_load(config.read_text())
    _store_seed(config, tmp_path / "seed1", S.seed_overrides(raw, 1), {"top1": 0.8})
    (tmp_path / "seed1" / "report.json").unlink()              # killed before the report: resume in place
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    with pytest.raises(RuntimeError, match="seed 1"):          # the fake run writes nothing
        S.run_seed(config, 1, tmp_path, threads=1)
    assert len(calls) == 1 and "models.0.train.seed=1" in calls[0] and str(tmp_path / "seed1") in calls[0]


def test_aggregate_over_seeds(tmp_path, monkeypatch):
    config = CONFIGS / "quickstart.yaml"
    raw = yaml.safe_load(config.read_text())
    for seed, top1 in ((0, 0.90), (1, 0.94), (2, 0.98)):
        _store_seed(config, tmp_path / f"seed{seed}", S.seed_overrides(raw, seed), {"top1": top1, "i2t_R@1": 0.5})
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("nothing should run"))
    assert S.main([str(config), "--seeds", "0", "1", "2", "--out", str(tmp_path),
                   "--json", str(tmp_path / "agg.json")]) == 0
    agg = json.loads((tmp_path / "agg.json").read_text())["aggregate"]
    assert agg["clip/top1"]["mean"] == pytest.approx(0.94) and agg["clip/top1"]["std"] == pytest.approx(0.04)
    assert agg["clip/i2t_R@1"]["std"] == 0.0 and agg["clip/train_s"]["values"] == [10.0] * 3
    assert "94.0 +- 4.0" in (tmp_path / "aggregate.md").read_text()


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    assert S.main([str(tmp_path / "nope.yaml")]) == 2
    assert S.main([str(CONFIGS / "quickstart.yaml"), "--seeds", "1", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "does not exist" in err[0] and "repeats a seed" in err[1]
