"""The protocol switch: `--protocol clip_benchmark|clip_paper` (and `protocol:` in run configs) selects class
names, templates, the linear-probe method, default precision and the data note together, the same way through
`mmfm eval` (run_eval) and `mmfm run`, and every result records the protocol it used."""
import json
import os

import pytest
import torch
import yaml

from mmfm.data.templates import CLASSNAMES, TEMPLATES, get_classnames, get_templates
from mmfm.eval import get_protocol, protocol_precision
from mmfm.eval.protocol import protocol_data_note
from mmfm.evaluate import evaluate, run_eval
from mmfm.experiment import run_experiment

SHAPES = {"size": 40, "image_size": 32}
ARGS = {"linear_probe": {"clip_paper": {"c_values": [0.1, 10.0], "coarse_to_fine": False},
                         "clip_benchmark": {"epochs": 2}},
        "zeroshot": {"clip_paper": {}, "clip_benchmark": {}}}


def _clip_benchmark_lists():
    cb = pytest.importorskip("clip_benchmark.datasets")
    folder = os.path.dirname(cb.__file__)
    names = json.load(open(os.path.join(folder, "en_classnames.json")))
    templates = json.load(open(os.path.join(folder, "en_zeroshot_classification_templates.json")))
    return names, templates


OURS_TO_CB = {"cifar10": "cifar10", "cifar100": "cifar100", "food101": "food101", "flowers102": "flowers",
              "dtd": "dtd", "eurosat": "eurosat"}


def test_class_names_and_templates_are_clip_benchmarks():
    names, templates = _clip_benchmark_lists()
    for ours, cb in OURS_TO_CB.items():
        assert [t.replace("{c}", "{}") for t in templates[cb]] == get_templates(ours, "clip_benchmark")
        if cb in names:      # its own list; else torchvision's names (CIFAR-100's kept raw, below)
            assert names[cb] == get_classnames(ours, "clip_benchmark")
    raw = [n for n in get_classnames("cifar100", "clip_benchmark") if "_" in n]
    assert raw == ["aquarium_fish", "lawn_mower", "maple_tree", "oak_tree", "palm_tree", "pickup_truck",
                   "pine_tree", "sweet_pepper", "willow_tree"]
    for ours in CLASSNAMES:                      # the CLIP paper's lists are unchanged
        assert get_classnames(ours) == list(CLASSNAMES[ours]) and get_templates(ours) == list(TEMPLATES[ours])
    assert get_classnames("cifar100", "clip_paper")[1] == "aquarium fish"
    with pytest.raises(ValueError, match="unknown protocol 'openai'"):
        get_classnames("cifar100", "openai")


def test_default_precision_and_probe_method_per_protocol():
    assert protocol_precision("clip_benchmark", "cuda") == "fp16"
    assert protocol_precision("clip_benchmark", "cuda:1") == "fp16"
    assert protocol_precision("clip_benchmark", "cpu") == "fp32"
    assert protocol_precision("clip_paper", "cuda") == "fp32"
    assert get_protocol("clip_benchmark").probe_method == "clip_benchmark"
    assert get_protocol("clip_paper").probe_method == "clip_paper"
    with pytest.raises(ValueError, match="choose one of"):
        get_protocol("published")


def test_eurosat_names_the_published_data():
    assert "wds/vtab/eurosat" in protocol_data_note("clip_benchmark", "eurosat")
    assert protocol_data_note("clip_paper", "eurosat") is None
    assert protocol_data_note("clip_benchmark", "wds/vtab/eurosat") is None


def test_zero_shot_on_cifar100_prompts_with_the_protocols_names(shapes_small, pixel_model, monkeypatch):
    seen = []
    zs = __import__("sys").modules["mmfm.eval.zero_shot"]     # the module (the package attribute is the function)
    monkeypatch.setattr(zs, "build_zero_shot_classifier",
                        lambda model, classnames, templates, **kw: seen.append(list(classnames)) or
                        torch.randn(16, len(classnames)))
    monkeypatch.setattr(shapes_small, "name", "cifar100")        # a CIFAR-100 stand-in: only its name is read
    for protocol in ("clip_paper", "clip_benchmark"):
        r = evaluate("zeroshot", pixel_model, shapes_small, protocol=protocol, device="cpu", progress=False)
        assert r.config["protocol"] == protocol
    assert "aquarium_fish" in seen[1] and "aquarium fish" not in seen[1] and len(seen[1]) == 100
    assert "aquarium_fish" not in seen[0]


def _through_run(tmp_path, weights, data, protocol):
    cfg = {"name": "p", "data": data, "models": [{"label": "m", "model": "ViT-tiny-test", "pretrained": weights}],
           "evals": [{"kind": k, "protocol": protocol, "args": ARGS[k][protocol],
                      **({"task": "color"} if k == "zeroshot" and data["test"]["name"] == "shapes" else {})}
                     for k in ARGS]}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(cfg))
    summary = run_experiment(tmp_path / "exp.yaml", out_dir=tmp_path / "run")
    return {d["kind"]: d for d in summary["models"][0]["evaluations"]}


@pytest.mark.parametrize("protocol", ["clip_paper", "clip_benchmark"])
@pytest.mark.parametrize("dataset", ["shapes", "digits"])
def test_same_numbers_through_eval_and_run(tmp_path, weights, protocol, dataset):
    kw = SHAPES if dataset == "shapes" else {}
    data = {s: {"name": dataset, "args": {"split": s, **kw}} for s in ("train", "test")}
    via_run = _through_run(tmp_path, weights, data, protocol)
    for kind in ARGS:
        r = run_eval(kind, "ViT-tiny-test", weights, dataset, dataset_kwargs=kw, device="cpu", progress=False,
                     model_label="m", protocol=protocol, task="color" if kind == "zeroshot" and dataset == "shapes"
                     else None, **ARGS[kind][protocol]).to_dict()
        assert r["headline"] == via_run[kind]["headline"] and r["metrics"] == via_run[kind]["metrics"]
        assert r["config"]["protocol"] == via_run[kind]["config"]["protocol"] == protocol
    lp = via_run["linear_probe"]
    assert lp["config"]["method"] == protocol
    assert lp["config"]["features"] == ("embedding" if protocol == "clip_benchmark" else "pre_projection")
    assert ("weight_decay" in lp["config"]) == (protocol == "clip_benchmark")


def test_cli_protocol_option(tmp_path, weights, capsys):
    from mmfm.cli import main
    assert main(["eval", "zeroshot", "--model", "ViT-tiny-test", "--pretrained", weights, "--dataset", "digits",
                 "--protocol", "clip_benchmark", "--device", "cpu", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "results.json").read_text())["results"][0]
    assert result["config"]["protocol"] == "clip_benchmark"
    with pytest.raises(SystemExit) as e:
        main(["eval", "zeroshot", "--dataset", "shapes", "--protocol", "openai"])
    assert e.value.code == 2


@pytest.mark.parametrize("protocol", ["clip_paper", "clip_benchmark"])
def test_published_comparison_names_the_protocol_used(monkeypatch, tmp_path, tiny_clip, protocol):
    import mmfm.api
    import mmfm.evaluate
    from mmfm.data import get_dataset
    monkeypatch.setattr(mmfm.api, "create_model", lambda *a, **k: tiny_clip)
    monkeypatch.setattr(mmfm.evaluate, "_load_dataset",          # digits standing in for CIFAR-10 (no download)
                        lambda dataset, root, split, kw: get_dataset("digits", split=split, image_size=32))
    r = run_eval("zeroshot", "ViT-B-32", "openai", "cifar10", out_dir=tmp_path, progress=False, device="cpu",
                 protocol=protocol)
    assert r.config["protocol"] == protocol and r.config["published"]["protocol_used"] == protocol
    assert f"Reproduced here: protocol {protocol}, precision fp32, device cpu." in (tmp_path / "results.md").read_text()
