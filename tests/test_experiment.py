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


_ROOT = __import__("pathlib").Path(__file__).parents[1]


@pytest.mark.parametrize("path", sorted([*_ROOT.glob("configs/*.yaml"), *_ROOT.glob("experiments/*/*.yaml")]),
                         ids=lambda p: str(p.relative_to(_ROOT)))
def test_bundled_configs_validate(path):
    cfg = load_experiment(path)
    from mmfm.models import get_model_config
    for m in cfg.models:
        if m.model:
            get_model_config(m.model)   # every referenced model config exists


# ---------------------------------------------------------------------------------------------
# One experiment per run folder, one run at a time.
TRAIN2 = {
    "name": "two",
    "data": {"train": {"name": "shapes", "args": {"split": "train", "size": 32, "image_size": 32}},
             "test": {"name": "shapes", "args": {"split": "test", "size": 16, "image_size": 32}}},
    "val_data": None,
    "models": [{"label": "m", "model": "ViT-tiny-test",
                "train": {"max_steps": 2, "batch_size": 8, "lr": 1e-3, "progress": False, "tensorboard": False}}],
    "evals": [{"kind": "zeroshot", "task": "shape"}],
}


def _cfg(**changes):
    cfg = json.loads(json.dumps(TRAIN2))
    for key, value in changes.items():
        node = cfg
        *parents, last = key.split(".")
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        node[last] = value
    return cfg


def test_other_experiment_into_same_folder_is_refused_then_resumed_or_overwritten(tmp_path, capsys):
    out = tmp_path / "out"
    first = run_experiment(_write(tmp_path, _cfg()), out_dir=out)
    assert first["models"][0]["train"]["resumed_from_step"] is None
    # Other lr and other data: not the experiment in the folder.
    other = _write(tmp_path, _cfg(**{"models.0.train.lr": 5e-3, "data.train.args.size": 48}))
    with pytest.raises(ValueError) as e:
        run_experiment(other, out_dir=out)
    msg = str(e.value)
    assert "holds another experiment" in msg and "models.0.train.lr" in msg and "data.train.args.size" in msg
    assert "--resume" in msg and "--overwrite" in msg and "\n" not in msg
    capsys.readouterr()
    assert main(["run", str(other), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--overwrite" in err
    assert yaml.safe_load((out / "config.resolved.yaml").read_text())["models"][0]["train"]["lr"] == 1e-3
    # --resume continues the first experiment's checkpoint with the new config ...
    resumed = run_experiment(other, out_dir=out, existing="resume")
    assert resumed["models"][0]["train"]["resumed_from_step"] == 2
    # ... --overwrite starts over.
    fresh = run_experiment(_write(tmp_path, _cfg(**{"models.0.train.lr": 2e-3})), out_dir=out, existing="overwrite")
    assert fresh["models"][0]["train"]["resumed_from_step"] is None
    assert yaml.safe_load((out / "config.resolved.yaml").read_text())["models"][0]["train"]["lr"] == 2e-3


def test_same_config_and_other_evaluations_resume(tmp_path):
    out = tmp_path / "out"
    run_experiment(_write(tmp_path, _cfg()), out_dir=out)
    again = run_experiment(_write(tmp_path, _cfg(evals=[{"kind": "retrieval"}], num_workers=0)), out_dir=out)
    assert again["models"][0]["train"]["resumed_from_step"] == 2
    assert "retrieval i2t_R@1" in again["models"][0]["metrics"]


def test_overwrite_removes_only_what_the_old_experiment_wrote(tmp_path):
    out = tmp_path / "out"
    eval_only = {**TINY, "models": [{"label": "a", "model": "ViT-tiny-test"}], "evals": [{"kind": "zeroshot", "task": "shape"}]}
    run_experiment(_write(tmp_path, eval_only), out_dir=out)
    (out / "notes.txt").write_text("mine")
    other = {**eval_only, "seed": 1, "models": [{"label": "b", "model": "ViT-tiny-test"}]}
    run_experiment(_write(tmp_path, other), out_dir=out, existing="overwrite")
    assert not (out / "a").exists() and (out / "b").is_dir() and (out / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("label", ["../x", "/abs", "", "a/b", ".", "..", " m", ".hidden"])
def test_labels_that_are_not_folder_names_are_refused(tmp_path, label):
    cfg = _cfg(**{"models.0.label": label})
    with pytest.raises(ValueError, match="models.0.label"):
        load_experiment(_write(tmp_path, cfg))


def test_name_must_be_a_folder_name(tmp_path):
    with pytest.raises(ValueError, match="name"):
        load_experiment(_write(tmp_path, _cfg(name="../../etc")))


def test_duplicate_labels_are_refused(tmp_path):
    cfg = _cfg()
    cfg["models"].append(dict(cfg["models"][0]))
    with pytest.raises(ValueError, match=r"duplicate model label\(s\) \['m'\]"):
        load_experiment(_write(tmp_path, cfg))


def test_lock_stops_a_second_run_on_the_same_folder(tmp_path):
    from mmfm.experiment import run_lock
    out = tmp_path / "out"
    with run_lock(out):
        # A second open file description conflicts with the first, as a second process's would.
        with pytest.raises(ValueError, match=f"in use by another `mmfm run` \\(pid {__import__('os').getpid()}"):
            run_experiment(_write(tmp_path, _cfg()), out_dir=out)
    with run_lock(out):      # released on exit
        pass


def test_lock_is_released_when_the_holder_is_killed(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    from mmfm.experiment import run_lock
    out = tmp_path / "out"
    code = ("import os, signal, sys; from pathlib import Path; from mmfm.experiment import run_lock\n"
            f"with run_lock(Path({str(out)!r})):\n"
            "    print('locked', flush=True); sys.stdin.readline()\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(ValueError, match="in use"):
            with run_lock(out):
                pass
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        with run_lock(out):
            pass
    finally:
        proc.kill()
        proc.wait()


def test_threads_key_sets_torch_threads(tmp_path):
    import torch
    before = torch.get_num_threads()
    try:
        cfg = {**TINY, "threads": 1, "models": [{"label": "a", "model": "ViT-tiny-test"}],
               "evals": [{"kind": "zeroshot", "task": "shape"}]}
        run_experiment(_write(tmp_path, cfg), out_dir=tmp_path / "out")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="threads"):
        load_experiment(_write(tmp_path, {**TINY, "threads": 0}))


def test_models_without_training_are_evaluated_by_rank_0_only(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    cfg = {**TINY, "models": [{"label": "a", "model": "ViT-tiny-test"}], "evals": [{"kind": "zeroshot", "task": "shape"}]}
    assert run_experiment(_write(tmp_path, cfg), out_dir=tmp_path / "out") == {}
    assert not (tmp_path / "out" / "a").exists() and not (tmp_path / "out" / "report.md").exists()
    assert not (tmp_path / "out" / "config.resolved.yaml").exists()


def test_random_weights_wall_time_and_atomic_reports(tmp_path, monkeypatch):
    cfg = {**TINY, "models": [{"label": "a", "model": "ViT-tiny-test"}],
           "evals": [{"kind": "zeroshot", "task": "shape"}, {"kind": "retrieval"}]}
    with pytest.warns(UserWarning, match="random weights"):
        summary = run_experiment(_write(tmp_path, cfg), out_dir=tmp_path / "out")
    out = tmp_path / "out"
    report = (out / "report.md").read_text()
    assert "a (random weights)" in report and "Whole job:" in report and "s wall time" in report
    assert "MiB" in report and " MB" not in report and summary["models"][0]["random_weights"] is True
    assert json.loads((out / "report.json").read_text())["models"][0]["evaluations"][0]["config"]["random_weights"]
    header = next(line for line in report.splitlines() if line.startswith("| model"))
    assert header.index("i2t_R@1 ") < header.index("i2t_R@5 ") < header.index("i2t_R@10 ")
    # A crash while a report is being replaced leaves the previous one whole.
    before = {f: (out / f).read_text() for f in ("report.md", "report.json", "results.json", "results.md")}
    import os

    import mmfm.util.atomic as atomic
    real_replace = os.replace

    def crash(src, dst):
        if os.path.basename(dst) in before:
            raise OSError("disk full")
        real_replace(src, dst)
    monkeypatch.setattr(atomic.os, "replace", crash)
    with pytest.raises(OSError):
        run_experiment(_write(tmp_path, cfg), out_dir=out)
    assert {f: (out / f).read_text() for f in before} == before


def test_cli_resume_and_overwrite_flags(tmp_path, monkeypatch):
    import mmfm.experiment as E
    seen = []
    monkeypatch.setattr(E, "run_experiment", lambda *a, existing="refuse", **k: seen.append(existing) or {})
    cfg = str(_write(tmp_path, TINY))
    assert [main(["run", cfg]), main(["run", cfg, "--resume"]), main(["run", cfg, "--overwrite"])] == [0, 0, 0]
    assert seen == ["refuse", "resume", "overwrite"]
    with pytest.raises(SystemExit):
        main(["run", cfg, "--resume", "--overwrite"])


def test_evaluations_during_training_belong_to_the_weights_of_their_step(tmp_path):
    """A ViT (no BatchNorm buffers whose versions would bump) trained with fused AdamW: each validation's
    zero-shot figures equal a fresh model loaded from that step's checkpoint (issue 14: they used to repeat the
    first validation's value, from features cached under a stale fingerprint)."""
    import torch

    from mmfm.data import get_dataset
    from mmfm.eval import zero_shot
    from mmfm.api import create_model
    cfg = json.loads(json.dumps(TINY))
    cfg["models"][0]["train"].update({"max_steps": 6, "lr": 1e-2, "eval_every": 2, "ckpt_every": 2, "keep_last": 10})
    cfg["eval_during_training"] = [{"kind": "zeroshot", "task": "color", "dataset": "val"}]
    cfg["evals"] = []
    run_experiment(_write(tmp_path, cfg), out_dir=tmp_path / "out")
    rows = [json.loads(line) for line in (tmp_path / "out/tiny/metrics.jsonl").read_text().splitlines()]
    during = {r["step"]: r["zeroshot_color_top1"] for r in rows if r["split"] == "val"}
    assert sorted(during) == [2, 4, 6]
    val = get_dataset("shapes", **TINY["data"]["val"]["args"])
    for step, value in during.items():
        fresh = create_model("ViT-tiny-test")
        ckpt = torch.load(tmp_path / f"out/tiny/checkpoints/ckpt-{step:08d}.pt", weights_only=True)
        fresh.load_state_dict(ckpt["model"])
        assert zero_shot(fresh.eval(), val, task="color", progress=False).metrics.top1 == \
            pytest.approx(value, abs=1e-9), step


def test_every_registered_evaluation_kind_is_accepted_by_run_configs():
    """Adding an evaluation kind is one row in mmfm.evaluate.KINDS: run configs take every kind (and its CLI
    spellings, stored by the canonical name) from that table, not from a second list."""
    from mmfm.evaluate import KINDS
    from mmfm.experiment import EvalSpec
    for kind in KINDS.values():
        for spelling in (kind.name, *kind.cli_names):
            assert EvalSpec(kind=spelling).kind == kind.name
    with pytest.raises(ValueError, match="unknown evaluation kind 'zero-shoot'"):
        EvalSpec(kind="zero-shoot")


def test_run_folders_written_before_adapt_existed_still_resume(tmp_path):
    """`lora:` and train's lock stay as written in config.resolved.yaml (they are translated into adapt steps
    only when the run applies them), so a folder whose resolved config predates `adapt:` is the same experiment."""
    from mmfm.experiment import check_run_folder
    cfg = json.loads(json.dumps(TINY))
    cfg["models"][0]["lora"] = "qv-r16"
    cfg["models"][0]["train"]["lock_text"] = 0
    loaded = load_experiment(_write(tmp_path, cfg))
    old = loaded.model_dump(mode="json")
    del old["models"][0]["adapt"]                       # what an older mmfm wrote
    assert old["models"][0]["lora"] == "qv-r16" and old["models"][0]["train"]["lock_text"] == 0
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "config.resolved.yaml").write_text(yaml.safe_dump(old))
    check_run_folder(loaded, tmp_path / "out")          # no "holds another experiment"


def test_model_families_are_a_registry_lookup_by_config_family(monkeypatch):
    from mmfm.api import create_model
    from mmfm.experiment import FAMILIES, ClipFamily, model_family, register_family
    from mmfm.frozen.family import FrozenFamily
    from mmfm.models import get_model_config
    clip = create_model("RN-S-64")
    assert isinstance(model_family(clip), ClipFamily)
    assert isinstance(model_family(get_model_config("RN-S-64")), ClipFamily)     # a config answers too

    class Mine(ClipFamily):
        name = "mine"
    monkeypatch.setitem(FAMILIES, "clip", FAMILIES["clip"])   # restored after the test
    mine = Mine()
    with pytest.raises(ValueError, match="already registered"):
        register_family("clip", mine)
    register_family("clip", mine, overwrite=True)
    assert model_family(clip) is mine
    assert isinstance(FAMILIES["frozen"], FrozenFamily)

    class Unknown:
        family = "no-such-family"
    with pytest.raises(ValueError, match="no runner family.*registered"):
        model_family(Unknown())


def test_the_runs_contrastive_objective_takes_every_setting_of_the_training_config():
    """`mmfm run` built its objective from loss and local_loss only, so `train.grad_chunk` was ignored there."""
    from mmfm.experiment import ClipFamily
    from mmfm.train import TrainConfig
    cfg = TrainConfig(loss="siglip", local_loss=True, grad_chunk=2)
    objective = ClipFamily().objective(None, cfg)
    assert (objective.loss_name, objective.local_loss, objective.grad_chunk) == ("siglip", True, 2)


def test_a_training_model_on_a_missing_experiment_train_data_key_is_one_clear_error(tmp_path):
    cfg = json.loads(json.dumps(TINY))
    cfg["train_data"] = "nope"
    with pytest.raises(ValueError, match=r"train_data 'nope' is not a key of data \(\['test', 'train', 'val'\]\)"):
        run_experiment(_write(tmp_path, cfg), out_dir=tmp_path / "run")
