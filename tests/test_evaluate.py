"""One evaluation path: `mmfm eval` (run_eval) and `mmfm run` (run_experiment) give the same numbers for
every evaluation kind, through the one registry of kinds."""
import json

import PIL.Image
import pytest
import yaml

from mmfm.adapt import few_shot
from mmfm.eval import headline, linear_probe, official_val_split, retrieval, zero_shot
from mmfm.eval.results import FewShotResult, LinearProbeResult, RetrievalResult, ZeroShotResult
from mmfm.evaluate import KINDS, cli_choices, evaluate, get_kind, run_eval
from mmfm.experiment import run_experiment

SHAPES = {"size": 40, "image_size": 32}
FAST = {"linear_probe": {"c_values": [0.1, 10.0], "coarse_to_fine": False},
        "fewshot": {"shots": [1, 2], "seeds": [0, 1], "method": "nearest_centroid"},
        "zeroshot": {}, "retrieval": {"num_examples": 2}}


@pytest.fixture
def dtd_root(tmp_path):
    """A DTD fake in torchvision's layout: 2 classes, 3 images of each per split, a colour per class."""
    data = tmp_path / "dtd" / "dtd"
    (data / "labels").mkdir(parents=True)
    colours = {"banded": (200, 30, 30), "zigzagged": (30, 30, 200)}
    for split, offset in (("train", 0), ("val", 10), ("test", 20)):
        lines = []
        for cls, colour in colours.items():
            for i in range(3):
                rel = f"{cls}/{cls}_{offset + i:04d}.jpg"
                (data / "images" / cls).mkdir(parents=True, exist_ok=True)
                shade = tuple(min(255, c + 17 * i + offset) for c in colour)
                PIL.Image.new("RGB", (20, 16), shade).save(data / "images" / rel)
                lines.append(rel)
        (data / "labels" / f"{split}1.txt").write_text("\n".join(lines) + "\n")
    return tmp_path


def _through_run(tmp_path, weights, data, kinds, task=None):
    cfg = {"name": "same", "data": data,
           "models": [{"label": "m", "model": "ViT-tiny-test", "pretrained": weights}],
           "evals": [{"kind": k, "args": FAST[k], **({"task": task} if task and k == "zeroshot" else {})}
                     for k in kinds]}
    summary = run_experiment(cfg_path := _write(tmp_path, cfg), out_dir=tmp_path / "run")
    assert cfg_path.is_file()
    return {d["kind"]: d for d in summary["models"][0]["evaluations"]}


def _write(tmp_path, cfg):
    p = tmp_path / "exp.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _same(a: dict, b: dict):
    assert a["headline"] == b["headline"]
    for key in ("num_train", "num_val", "best_c", "per_shot", "metrics"):
        assert a.get(key) == b.get(key), key


def test_every_kind_same_numbers_and_pngs_through_eval_and_run_on_shapes(tmp_path, weights):
    data = {"train": {"name": "shapes", "args": {"split": "train", **SHAPES}},
            "test": {"name": "shapes", "args": {"split": "test", **SHAPES}}}
    clip_kinds = [k for k, kind in KINDS.items() if kind.family == "clip"]   # captioning/vqa: Frozen's
    via_run = _through_run(tmp_path, weights, data, clip_kinds, task="color")
    assert set(via_run) == set(clip_kinds)
    from_eval = []
    for kind in clip_kinds:
        r = run_eval(kind, "ViT-tiny-test", weights, "shapes", out_dir=tmp_path / kind, dataset_kwargs=SHAPES,
                     device="cpu", progress=False, model_label="m", task="color" if kind == "zeroshot" else None,
                     **FAST[kind])
        _same(r.to_dict(), via_run[kind])
        from_eval += [p.name for p in (tmp_path / kind).glob("*.png")]
    # `mmfm eval --out` writes the same figures as `mmfm run` (retrieval's too), none named "None".
    from_run = sorted(p.name for p in (tmp_path / "run" / "m" / "eval").glob("*.png"))
    assert sorted(from_eval) == from_run and any(n.startswith("retrieval_") for n in from_run)
    assert not any("None" in n for n in from_run)


def test_benchmark_linear_probe_uses_the_official_val_split_both_ways(tmp_path, weights, dtd_root):
    data = {"train": {"name": "dtd", "args": {"root": str(dtd_root), "split": "train"}},
            "test": {"name": "dtd", "args": {"root": str(dtd_root), "split": "test"}}}
    kinds = ["zeroshot", "linear_probe", "fewshot"]
    via_run = _through_run(tmp_path, weights, data, kinds)
    for kind in kinds:
        r = run_eval(kind, "ViT-tiny-test", weights, "dtd", dtd_root, device="cpu", progress=False, **FAST[kind])
        _same(r.to_dict(), via_run[kind])
    # The C sweep ran on DTD's own 6 validation images, not on a part of train.
    assert via_run["linear_probe"]["num_val"] == 6 and via_run["linear_probe"]["num_train"] == 6
    assert via_run["linear_probe"]["config"]["official_val_split"] is True


def test_registry_names_function_result_type_and_spellings():
    from mmfm.eval.generation_results import CaptioningResult, VQAResult
    from mmfm.frozen.evals import BindingResult, binding, captioning, vqa
    result_types = {"zeroshot": ZeroShotResult, "linear_probe": LinearProbeResult, "fewshot": FewShotResult,
                    "retrieval": RetrievalResult, "captioning": CaptioningResult, "vqa": VQAResult,
                    "binding": BindingResult}
    assert set(KINDS) == set(result_types)
    assert {name: kind.function for name, kind in KINDS.items()} == {
        "zeroshot": zero_shot, "linear_probe": linear_probe, "fewshot": few_shot, "retrieval": retrieval,
        "captioning": captioning, "vqa": vqa, "binding": binding}
    assert {name for name, kind in KINDS.items() if kind.family == "frozen"} == {"captioning", "vqa", "binding"}
    for name, kind in KINDS.items():
        assert kind.result_type is result_types[name] and kind.result_type.kind == name
        for spelling in kind.cli_names:
            assert get_kind(spelling) is kind
    with pytest.raises(ValueError, match="unknown evaluation 'captioning-ish'"):
        get_kind("captioning-ish")
    assert official_val_split("Flowers102") == "val" and official_val_split("cifar10") is None
    assert official_val_split("dtd", None) is None


def test_unknown_argument_names_allowed_ones(shapes_small, pixel_model):
    with pytest.raises(ValueError, match=r"unknown argument\(s\) \['shotz'\].*'shots'"):
        evaluate("fewshot", pixel_model, shapes_small, shapes_small, shotz=[1])


def test_headline_is_the_result_types_own(tmp_path, weights):
    r = run_eval("zeroshot", "ViT-tiny-test", weights, "shapes", dataset_kwargs=SHAPES, device="cpu", progress=False)
    assert headline(r) == {k: v for k, v in r.headline().items() if v is not None}
    assert headline(json.loads(r.to_json())) == headline(r)


def test_eval_without_pretrained_warns_and_records_random_weights(tmp_path):
    with pytest.warns(UserWarning, match="random weights"):
        r = run_eval("zeroshot", "ViT-tiny-test", None, "shapes", out_dir=tmp_path, dataset_kwargs=SHAPES,
                     device="cpu", progress=False)
    assert "Warning: random weights" in r.to_markdown()          # what `mmfm eval` prints
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["results"][0]["config"]["random_weights"] is True
    assert "random weights" in (tmp_path / "results.md").read_text()


def test_eval_help_lists_datasets_and_an_example(capsys):
    from mmfm.cli import main
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    out = capsys.readouterr().out
    for name in ("shapes", "digits", "cifar10", "flowers102", "dtd", "flickr30k"):
        assert name in out
    assert "example" in out.lower() and "mmfm eval zeroshot --model" in out
    for kind in ("zeroshot", "linear-probe", "fewshot", "retrieval"):
        assert kind in out


def test_cli_eval_choices_are_the_registrys():
    from mmfm.cli import EVAL_CHOICES
    assert EVAL_CHOICES == cli_choices()


def test_eval_works_without_adapt_which_sits_above_it():
    """eval never imports adapt (not even for a side effect): the few-shot evaluation and its methods
    live in adapt, the table of kinds above both."""
    import subprocess
    import sys
    code = ("import sys, mmfm.eval; from mmfm.eval import zero_shot, linear_probe, retrieval; "
            "print(sorted(m for m in ('mmfm.adapt', 'mmfm.evaluate') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
