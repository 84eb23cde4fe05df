"""``run_eval``: the function behind ``mmfm eval zeroshot|linear-probe|fewshot|retrieval``."""
import json

import pytest

from mmfm.evaluate import run_eval

SMALL = {"size": 40, "image_size": 32}


def test_zeroshot_writes_report(tmp_path):
    r = run_eval("zeroshot", "ViT-tiny-test", None, "shapes", None, tmp_path, dataset_kwargs=SMALL,
                 task="color", progress=False, device="cpu")
    assert r.kind == "zeroshot" and r.model == "ViT-tiny-test" and r.task == "color"
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["results"][0]["dataset"] == "shapes"
    assert "shapes/color zero-shot top1" in (tmp_path / "results.md").read_text()
    assert list(tmp_path.glob("confusion_*.png"))


def test_linear_probe_fewshot_retrieval(tmp_path):
    lp = run_eval("linear-probe", "ViT-tiny-test", None, "shapes", None, tmp_path / "lp", dataset_kwargs=SMALL,
                  c_values=[0.1, 10.0], coarse_to_fine=False, progress=False, device="cpu")
    assert lp.kind == "linear_probe" and lp.num_train + lp.num_val == SMALL["size"]
    assert list((tmp_path / "lp").glob("c_sweep_*.png"))
    fs = run_eval("few-shot", "ViT-tiny-test", None, "shapes", None, None, dataset_kwargs=SMALL, shots=(1, 2),
                  seeds=(0,), method="nearest_centroid", progress=False, device="cpu")
    assert sorted(fs.per_shot) == [1, 2]
    rt = run_eval("retrieval", "ViT-tiny-test", None, "shapes", None, None, dataset_kwargs=SMALL, progress=False,
                  device="cpu")
    assert rt.num_images == SMALL["size"]


def test_unknown_kind_and_dataset():
    with pytest.raises(ValueError, match="unknown evaluation"):
        run_eval("segmentation", "ViT-tiny-test", None, "shapes")
    with pytest.raises(ValueError, match="captioning needs a Frozen model"):   # a kind, of another family
        run_eval("captioning", "ViT-tiny-test", None, "shapes")
    with pytest.raises(ValueError, match="unknown dataset"):
        run_eval("zeroshot", "ViT-tiny-test", None, "imagenet-9000", progress=False, device="cpu")


def test_missing_benchmark_files_are_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        run_eval("zeroshot", "ViT-tiny-test", None, "cifar10", tmp_path, progress=False, device="cpu")
