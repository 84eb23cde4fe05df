"""The adaptation registry and a run config's ``adapt:`` list: validation, one code path for ``lora:`` and
train's lock/freeze, WiSE-FT rows per alpha, and a method added from one file."""
import json

import pytest
import torch
import yaml
from pydantic import Field
from safetensors.torch import load_file

from mmfm.adapt.registry import ADAPTATIONS, AdaptContext, Options, apply_adaptations, parse_step, register_adaptation
from mmfm.experiment import load_experiment, run_experiment

TRAIN = {"max_steps": 2, "batch_size": 8, "lr": 1e-2, "progress": False, "tensorboard": False, "grad_clip": None}


def _config(models, name="adapt"):
    return {"name": name,
            "data": {"train": {"name": "shapes", "args": {"split": "train", "size": 32, "image_size": 32}},
                     "test": {"name": "shapes", "args": {"split": "test", "size": 32, "image_size": 32}}},
            "val_data": None, "models": models, "evals": [{"kind": "zeroshot", "task": "shape"}]}


def _write(tmp_path, cfg, name="exp.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(cfg))
    return p


def _load_error(tmp_path, model: dict) -> str:
    with pytest.raises(ValueError) as e:
        load_experiment(_write(tmp_path, _config([{"label": "m", "model": "ViT-tiny-test", **model}])))
    return str(e.value)


@pytest.fixture(scope="module")
def initial_checkpoint(tmp_path_factory):
    """A saved tiny model, so every run (and the test) starts from the same known weights."""
    from mmfm import create_model
    from mmfm.checkpoints import save_pretrained
    torch.manual_seed(0)
    return str(save_pretrained(create_model("ViT-tiny-test"), tmp_path_factory.mktemp("init") / "model"))


def _weights(out, label):
    return load_file(str(out / label / "model" / "model.safetensors"))


# -- validation --------------------------------------------------------------------------------
def test_unknown_method_is_named_with_the_registered_ones(tmp_path):
    msg = _load_error(tmp_path, {"adapt": [{"method": "lora"}, {"method": "prompt_tune"}]})
    assert "models.0.adapt" in msg and "adapt.1" in msg and "'prompt_tune'" in msg
    assert all(name in msg for name in ("lora", "lock", "freeze", "wise_ft"))


def test_unknown_option_is_named_with_the_allowed_ones(tmp_path):
    msg = _load_error(tmp_path, {"adapt": [{"method": "lora", "rank": 4}]})
    assert "adapt.0" in msg and "unknown key 'rank'" in msg and "'r'" in msg


def test_bad_lora_sugar_options_fail_at_load_not_at_run(tmp_path):
    msg = _load_error(tmp_path, {"lora": {"preset": "qv-r16", "rank": 4}})
    assert "lora" in msg and "'rank'" in msg
    assert "unknown LoRA preset 'qv-r99'" in _load_error(tmp_path, {"lora": "qv-r99"})


def test_lora_and_adapt_together_are_refused(tmp_path):
    msg = _load_error(tmp_path, {"lora": "qv-r16", "adapt": [{"method": "lock", "image": 0}]})
    assert "not both" in msg


def test_after_training_method_needs_training(tmp_path):
    msg = _load_error(tmp_path, {"adapt": [{"method": "wise_ft", "alpha": 0.5}]})
    assert "wise_ft" in msg and "train" in msg


@pytest.mark.parametrize("step, words", [({"method": "lock"}, "name a tower"),
                                         ({"method": "wise_ft", "alpha": []}, "alpha"),
                                         ({"method": "freeze", "prefixes": []}, "prefixes"),
                                         ({"preset": "qv-r16"}, "{method: NAME")])
def test_malformed_steps_name_the_problem(step, words):
    with pytest.raises(ValueError) as e:
        parse_step(step)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_train_lock_and_freeze_become_adapt_steps():
    from mmfm.experiment import ModelSpec, adaptation_steps
    spec = ModelSpec(label="m", model="ViT-tiny-test", lora="qv-r16",
                     train={**TRAIN, "lock_text": 1, "freeze": ["logit_scale"]})
    assert [s.to_dict() for s in adaptation_steps(spec)] == [
        {"method": "lora", "preset": "qv-r16"}, {"method": "lock", "text": 1},
        {"method": "freeze", "prefixes": ["logit_scale"]}]


# -- one code path -----------------------------------------------------------------------------
def test_lora_sugar_and_adapt_lora_give_identical_runs(tmp_path):
    lora = {"preset": "qv-r16", "r": 2}
    a = run_experiment(_write(tmp_path, _config([{"label": "m", "model": "ViT-tiny-test", "lora": lora,
                                                   "train": TRAIN}])), out_dir=tmp_path / "a")
    b = run_experiment(_write(tmp_path, _config([{"label": "m", "model": "ViT-tiny-test", "train": TRAIN,
                                                   "adapt": [{"method": "lora", **lora}]}])), out_dir=tmp_path / "b")
    ra, rb = a["models"][0], b["models"][0]
    assert ra["metrics"] == rb["metrics"] and ra["params"] == rb["params"]
    assert ra["adaptations"] == rb["adaptations"] == [{"method": "lora", **lora}]
    assert ra["params"]["trainable"] < ra["params"]["total"]      # only the adapters trained
    wa, wb = _weights(tmp_path / "a", "m"), _weights(tmp_path / "b", "m")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_lock_via_adapt_equals_lock_via_train_config(tmp_path, initial_checkpoint):
    base = {"model": "ViT-tiny-test", "pretrained": initial_checkpoint}
    a = run_experiment(_write(tmp_path, _config([{"label": "m", **base, "train": {**TRAIN, "lock_image": 1}}])),
                       out_dir=tmp_path / "a")
    b = run_experiment(_write(tmp_path, _config([{"label": "m", **base, "train": TRAIN,
                                                   "adapt": [{"method": "lock", "image": 1}]}])), out_dir=tmp_path / "b")
    ra, rb = a["models"][0], b["models"][0]
    assert ra["params"] == rb["params"] and ra["metrics"] == rb["metrics"]
    assert ra["params"]["trainable"] < ra["params"]["total"]
    wa, wb = _weights(tmp_path / "a", "m"), _weights(tmp_path / "b", "m")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # what the tower's own lock froze stayed at its initial value; the text tower trained
    from mmfm import create_model
    ref = create_model("ViT-tiny-test", pretrained=initial_checkpoint)
    ref.lock_image_tower(1)
    init = ref.state_dict()
    for n, p in ref.named_parameters():
        if n.startswith("visual."):
            assert torch.equal(wa[n], init[n]) != p.requires_grad, n
    assert not torch.equal(wa["text.token_embedding.weight"], init["text.token_embedding.weight"])


def test_wise_ft_alpha_0_is_the_initial_model_and_alpha_1_the_fine_tuned_one(tmp_path, initial_checkpoint):
    base = {"model": "ViT-tiny-test", "pretrained": initial_checkpoint}
    cfg = _config([{"label": "init", **base},
                   {"label": "ft", **base, "train": TRAIN},
                   {"label": "wise", **base, "train": TRAIN, "adapt": [{"method": "wise_ft", "alpha": [0.0, 0.5, 1.0]}]}])
    cfg["evals"].append({"kind": "retrieval"})
    summary = run_experiment(_write(tmp_path, cfg), out_dir=tmp_path / "out")
    rows = {r["label"]: r for r in summary["models"]}
    assert list(rows) == ["init", "ft", "wise@alpha=0", "wise@alpha=0.5", "wise@alpha=1"]
    assert rows["wise@alpha=0"]["metrics"] == rows["init"]["metrics"]
    assert rows["wise@alpha=1"]["metrics"] == rows["ft"]["metrics"]
    assert rows["init"]["metrics"] != rows["ft"]["metrics"]       # training changed something to compare
    assert rows["wise@alpha=0.5"]["adaptations"] == [{"method": "wise_ft", "alpha": [0.0, 0.5, 1.0]}]
    assert "wise@alpha=0.5" in (tmp_path / "out" / "report.md").read_text()


# -- one-file extensibility ----------------------------------------------------------------------
class TrainOnlyOptions(Options):
    keep: list[str] = Field(min_length=1, description="parameter names left trainable")


@pytest.fixture
def train_only():
    @register_adaptation("train_only_test", TrainOnlyOptions)
    def train_only(model, opts, context):
        for n, p in model.named_parameters():
            p.requires_grad_(n in opts.keep)
        return model
    yield
    del ADAPTATIONS["train_only_test"]


def test_a_method_registered_in_one_file_works_through_a_run_config(tmp_path, train_only, initial_checkpoint):
    assert "unknown key 'kept'" in _load_error(tmp_path, {"adapt": [{"method": "train_only_test", "kept": ["x"]}]})
    step = {"method": "train_only_test", "keep": ["logit_scale"]}
    summary = run_experiment(_write(tmp_path, _config([{"label": "m", "model": "ViT-tiny-test", "train": TRAIN,
                                                         "pretrained": initial_checkpoint, "adapt": [step]}])),
                             out_dir=tmp_path / "out")
    row = summary["models"][0]
    assert row["adaptations"] == [step] and row["params"]["trainable"] == 1
    init, trained = load_file(initial_checkpoint + "/model.safetensors"), _weights(tmp_path / "out", "m")
    changed = {k for k in init if not torch.equal(init[k], trained[k])}
    assert changed == {"logit_scale"}


def test_apply_adaptations_runs_steps_in_order_and_fans_out_variants(initial_checkpoint):
    from mmfm import create_model
    model = create_model("ViT-tiny-test", pretrained=initial_checkpoint)
    initial = create_model("ViT-tiny-test", pretrained=initial_checkpoint)
    with torch.no_grad():
        model.logit_scale.add_(1.0)
    out = apply_adaptations(model, [{"method": "wise_ft", "alpha": [0.0, 1.0]},
                                    {"method": "freeze", "prefixes": ["visual"]}], AdaptContext(initial=initial))
    assert list(out) == ["@alpha=0", "@alpha=1"]
    assert out["@alpha=0"].logit_scale.item() == initial.logit_scale.item()
    assert out["@alpha=1"].logit_scale.item() == model.logit_scale.item()
    assert all(not p.requires_grad for m in out.values() for n, p in m.named_parameters() if n.startswith("visual."))
    assert json.dumps(parse_step({"method": "wise_ft", "alpha": 0.5}).to_dict())


def test_wise_ft_after_lora_interpolates_the_merged_adapter(initial_checkpoint):
    from mmfm import create_model
    from mmfm.adapt import merged_copy
    from mmfm.adapt.registry import initial_copy, split_steps
    steps = [{"method": "lora", "preset": "qv-r16", "r": 2}, {"method": "wise_ft", "alpha": [0.0, 1.0]}]
    model = create_model("ViT-tiny-test", pretrained=initial_checkpoint)
    context = AdaptContext(initial=initial_copy(model, steps))
    before, after = split_steps(steps)
    assert [s.method for s in before] == ["lora"] and [s.method for s in after] == ["wise_ft"]
    (model,) = apply_adaptations(model, before, context).values()
    with torch.no_grad():                        # stands in for training: a non-zero adapter update
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_()
    out = apply_adaptations(model, after, context)
    init, merged = context.initial.state_dict(), merged_copy(model).state_dict()
    a0, a1 = out["@alpha=0"].state_dict(), out["@alpha=1"].state_dict()
    assert a0.keys() == init.keys() == a1.keys() == merged.keys()
    assert all(torch.equal(a0[k], init[k]) and torch.equal(a1[k], merged[k]) for k in init)
    assert any(not torch.equal(init[k], merged[k]) for k in init)
