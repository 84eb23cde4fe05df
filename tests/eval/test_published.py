"""Published figures shipped with mmfm (issue 16 item 3): open_clip's table, ``mmfm published``,
``mmfm pretrained``, and published / reproduced / difference beside every evaluation of known weights."""
from __future__ import annotations

import copy
import json
import tomllib
from pathlib import Path

import pytest

import mmfm.api
import mmfm.evaluate
from mmfm.cli import main
from mmfm.eval.published import PUBLISHED_FILE, compare_with_published, load_published, published_metrics

REQUIRED = [("RN50", "openai"), ("ViT-B-32", "openai"), ("ViT-B-16", "openai"), ("ViT-L-14", "openai"),
            ("ViT-B-32", "laion2b_s34b_b79k")]
DATASETS = ["cifar10", "cifar100", "food101", "flowers102", "dtd", "eurosat"]
ROOT = Path(__file__).resolve().parents[2]


def test_shipped_table_has_the_required_cells_and_its_source():
    doc = load_published()
    assert "mlfoundations/open_clip" in doc["source"]["repository"] and len(doc["source"]["commit"]) == 40
    assert doc["protocol"]["name"] == "clip_benchmark" and "fp16" in doc["protocol"]["summary"]
    for model, tag in REQUIRED:
        for d in DATASETS:
            values = published_metrics(model, tag, d, "zeroshot")
            assert values and all(0 < v < 1 for v in values.values()), (model, tag, d)
        assert set(published_metrics(model, tag, "flickr30k", "retrieval")) == {
            f"{d}_R@{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)}
    # the example row (OpenAI ViT-B-32), as printed: percent, one decimal
    row = [round(100 * next(iter(published_metrics("ViT-B-32", "openai", d, "zeroshot").values())), 1) for d in DATASETS]
    assert row == [89.8, 64.2, 84.0, 66.7, 44.4, 50.4]
    # Flowers-102 is published as mean per-class recall, the others as top-1
    assert list(published_metrics("ViT-B-32", "openai", "flowers102", "zeroshot")) == ["mean_per_class"]
    assert list(published_metrics("ViT-B-32", "openai", "cifar10", "zeroshot")) == ["top1"]


def test_lookup_spellings():
    assert published_metrics("ViT-B-32-quickgelu", "openai", "cifar10", "zeroshot") == \
        published_metrics("ViT-B-32", "openai", "cifar10", "zeroshot")
    assert published_metrics("ViT-B-32", "openai", "wds/vtab/eurosat", "zeroshot") == \
        published_metrics("ViT-B-32", "openai", "eurosat", "zeroshot")
    assert published_metrics("ViT-B-32", "openai", "shapes", "zeroshot") is None
    assert published_metrics("ViT-B-32", "no-such-tag", "cifar10", "zeroshot") is None
    assert published_metrics("ViT-B-32", "openai", "cifar10", "linear_probe") is None


def test_published_json_is_package_data():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["mmfm"]
    assert PUBLISHED_FILE.name == "published.json" and "eval/published.json" in data


def table_rows(text: str) -> list[list[str]]:
    """The cells of every markdown table row in ``text`` (the writer pads columns; the cells are what counts)."""
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines() if line.startswith("|")]


def test_cli_published(capsys):
    assert main(["published", "ViT-B-32", "openai"]) == 0
    out = capsys.readouterr().out
    assert ["ViT-B-32", "openai", "89.8", "64.2", "84.0", "66.7", "44.4", "50.4"] in [r[:8] for r in table_rows(out)]
    assert "openclip_results.csv" in out and "clip_benchmark" in out
    assert main(["published", "ViT-B-32"]) == 0
    out = capsys.readouterr().out
    assert "laion2b_s34b_b79k" in out and "RN50" not in [r[0] for r in table_rows(out)]
    assert main(["published"]) == 0
    assert ["RN50", "openai"] in [r[:2] for r in table_rows(capsys.readouterr().out)]


def test_cli_published_unknown_is_one_line(capsys):
    assert main(["published", "ViT-Z-99"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "ViT-Z-99" in err and "ViT-B-32" in err


def test_cli_pretrained_lists_loadable_tags(capsys):
    pytest.importorskip("open_clip")
    assert main(["pretrained"]) == 0
    out = capsys.readouterr().out
    rows = {tuple(c.strip() for c in line.strip("|").split("|")) for line in out.splitlines() if line.startswith("|")}
    assert ("ViT-B-32", "laion2b_s34b_b79k", "yes") in rows and ("RN50", "openai", "yes") in rows
    assert ("ViT-B-32", "metaclip_400m", "–") in rows   # loadable, but no published row


def _digits_as(name):
    """The embedded digits test split standing in for a benchmark (no download in tests)."""
    from mmfm.data import get_dataset
    return lambda dataset, data_root, split, kw: get_dataset("digits", split=split, image_size=32)


def test_run_eval_shows_published_beside_reproduced(monkeypatch, tmp_path, tiny_clip):
    import mmfm.models
    monkeypatch.setattr(mmfm.api, "create_model", lambda *a, **k: tiny_clip)
    monkeypatch.setattr(mmfm.evaluate, "_load_dataset", _digits_as("cifar10"))
    r = mmfm.evaluate.run_eval("zeroshot", "ViT-B-32", "openai", "cifar10", out_dir=tmp_path, progress=False, device="cpu")
    pub = r.config["published"]
    assert pub["model"] == "ViT-B-32" and pub["pretrained"] == "openai" and pub["dataset"] == "cifar10"
    (row,) = pub["rows"]
    assert row["metric"] == "top1" and row["published"] == 0.8983 and row["reproduced"] == r.top1
    assert row["difference"] == pytest.approx(r.top1 - 0.8983)
    assert "clip_benchmark" in pub["protocol"] and pub["precision"] == "fp32"
    md = (tmp_path / "results.md").read_text()
    assert ["top1", "89.83", f"{100 * r.top1:.2f}", f"{100 * (r.top1 - 0.8983):+.2f}"] in table_rows(md)
    saved = json.loads((tmp_path / "results.json").read_text())["results"][0]["config"]["published"]
    assert saved["rows"][0]["published"] == 0.8983


def test_no_published_comparison_for_other_weights(monkeypatch, tmp_path, tiny_clip):
    """A local checkpoint, an adapter or a split other than test are not the published weights/data."""
    import mmfm.models
    monkeypatch.setattr(mmfm.api, "create_model", lambda *a, **k: tiny_clip)
    monkeypatch.setattr(mmfm.evaluate, "_load_dataset", _digits_as("cifar10"))
    ckpt = tmp_path / "openai"
    ckpt.mkdir()
    r = mmfm.evaluate.run_eval("zeroshot", "ViT-B-32", str(ckpt), "cifar10", progress=False, device="cpu")
    assert "published" not in r.config
    r = mmfm.evaluate.run_eval("zeroshot", "ViT-B-32", "openai", "cifar10", test_split="val", progress=False, device="cpu")
    assert "published" not in r.config
    from mmfm.adapt import apply_lora, save_lora
    save_lora(apply_lora(copy.deepcopy(tiny_clip), "qv-r16"), tmp_path / "adapter")
    monkeypatch.setattr(mmfm.api, "create_model", lambda *a, **k: copy.deepcopy(tiny_clip))
    r = mmfm.evaluate.run_eval("zeroshot", "ViT-B-32", "openai", "cifar10", adapter=tmp_path / "adapter", progress=False,
                           device="cpu")
    assert "published" not in r.config and r.config["adapter"] == str(tmp_path / "adapter")


def test_compare_retrieval_rows(tiny_clip):
    from mmfm.data import get_dataset
    from mmfm.eval import retrieval
    r = retrieval(tiny_clip, get_dataset("digits", split="test", image_size=32), progress=False, device="cpu")
    comp = compare_with_published(r, "ViT-B-32", "laion2b_s34b_b79k", "flickr30k")
    got = {row["metric"]: row for row in comp["rows"]}
    assert got["t2i_R@1"]["published"] == 0.6678 and got["i2t_R@1"]["published"] == 0.841
    assert got["t2i_R@1"]["reproduced"] == r.metrics["t2i_R@1"]


def test_mmfm_run_shows_published_beside_reproduced_for_pretrained_weights_only(monkeypatch, tmp_path, tiny_clip):
    """`mmfm run` evaluates through the same registry and shows the same comparison as `mmfm eval` for a
    pretrained tag used as it is; a model trained in the run gets none."""
    import yaml

    import mmfm.experiment as experiment
    from mmfm.data import get_dataset
    monkeypatch.setattr(mmfm.api, "create_model", lambda *a, **k: copy.deepcopy(tiny_clip))
    monkeypatch.setattr(experiment, "_build_datasets",        # digits standing in for CIFAR-10 (no download)
                        lambda cfg: {"test": get_dataset("digits", split="test", image_size=32)})
    cfg = {"name": "pub", "data": {"test": {"name": "cifar10", "args": {"split": "test"}}},
           "models": [{"label": "openai", "model": "ViT-B-32", "pretrained": "openai"}],
           "evals": [{"kind": "zeroshot"}]}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    experiment.run_experiment(path, out_dir=tmp_path / "out")
    saved = json.loads((tmp_path / "out/results.json").read_text())["results"][0]["config"]
    assert saved["published"]["rows"][0]["published"] == 0.8983
    assert saved["published"]["protocol_used"] == "clip_paper"
