"""clip_benchmark's WebDataset benchmark layout (``wds/...``): mmfm reads it as clip_benchmark does, and
zero-shot / retrieval on it give clip_benchmark's own predictions and recalls (its evaluation code run on
the same shards, on CPU, fp32: ``amp=False`` is its harness switch, its maths untouched)."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from mmfm.data import Shapes, get_dataset
from mmfm.data.clip_benchmark_wds import ClipBenchmarkWds, hub_repo

CLASSNAMES = ["circle", "square", "triangle"]
TEMPLATES = ["a photo of a {c}.", "a drawing of a {c} shape."]


def _bytes(image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format={"webp": "WEBP", "png": "PNG"}[fmt], **({"lossless": True} if fmt == "webp" else {}))
    return buf.getvalue()


def _write_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def _write_split(folder: Path, samples: list[list[tuple[str, bytes]]], per_shard: int) -> None:
    """clip_benchmark's writer's layout: ``<split>/{0,1,..}.tar`` of ``s%07d.<ext>`` members + nshards.txt."""
    folder.mkdir(parents=True)
    shards = [samples[i:i + per_shard] for i in range(0, len(samples), per_shard)]
    for n, shard in enumerate(shards):
        _write_tar(folder / f"{n}.tar", [m for sample in shard for m in sample])
    (folder / "nshards.txt").write_text(f"{len(shards)}\n")


@pytest.fixture(scope="module")
def shapes():
    return Shapes("test", size=20, image_size=32)


@pytest.fixture(scope="module")
def cls_root(tmp_path_factory, shapes) -> Path:
    """A classification set: shapes images as .webp and .png (alternating) with .cls labels, 3 shards."""
    root = tmp_path_factory.mktemp("wds_shapes")
    samples = []
    for i in range(len(shapes)):
        s = shapes[i]
        fmt = "webp" if i % 2 else "png"
        samples.append([(f"s{i:07d}.{fmt}", _bytes(s.image, fmt)), (f"s{i:07d}.cls", str(s.attributes["shape"]).encode())])
    _write_split(root / "test", samples, per_shard=8)
    (root / "classnames.txt").write_text("\n".join(shapes.attribute_classes["shape"]) + "\n")
    (root / "zeroshot_classification_templates.txt").write_text("\n".join(TEMPLATES) + "\n")
    return root


@pytest.fixture(scope="module")
def ret_root(tmp_path_factory, shapes) -> Path:
    """A retrieval set: .webp images with every caption in .txt, one a line, dataset_type.txt = retrieval."""
    root = tmp_path_factory.mktemp("wds_shapes_captions")
    samples = []
    for i in range(len(shapes)):
        s = shapes[i]
        caps = s.captions[:2] + [f"picture number {i} of a {shapes.attribute_classes['shape'][s.attributes['shape']]}"]
        samples.append([(f"s{i:07d}.webp", _bytes(s.image, "webp")), (f"s{i:07d}.txt", "\n".join(caps).encode())])
    _write_split(root / "test", samples, per_shard=7)
    (root / "dataset_type.txt").write_text("retrieval\n")
    return root


@pytest.fixture(scope="module")
def model():
    from mmfm.api import create_model
    torch.manual_seed(0)
    return create_model("ViT-tiny-test").eval()


def _reference_loader(root: Path, transform, retrieval: bool):
    from clip_benchmark.datasets.builder import build_wds_dataset, image_captions_collate_fn
    ds = build_wds_dataset("shapes", transform=transform, split="test", data_dir=str(root))
    return ds, torch.utils.data.DataLoader(ds, batch_size=6, num_workers=0,
                                           collate_fn=image_captions_collate_fn if retrieval else None)


def test_reads_the_layout_as_clip_benchmark_does(cls_root, shapes):
    ds = get_dataset("wds/vtab/eurosat", root=cls_root, split="test")
    assert isinstance(ds, ClipBenchmarkWds) and len(ds) == len(shapes) and len(ds.shards) == 3
    assert ds.classes == shapes.attribute_classes["shape"]
    assert [ds.get_sample(i).label for i in range(len(ds))] == [shapes[i].attributes["shape"] for i in range(len(ds))]
    task = next(iter(ds.zero_shot_tasks().values()))
    # clip_benchmark fills "{c}" templates with t.format(c=name): the prompts must be the same strings
    assert task.prompts()[1] == [t.format(c=ds.classes[1]) for t in TEMPLATES]
    assert np.array_equal(np.asarray(ds.get_sample(3).image), np.asarray(shapes[3].image.convert("RGB")))


def test_zero_shot_predictions_equal_clip_benchmark(cls_root, model):
    from clip_benchmark.metrics.zeroshot_classification import run_classification, zero_shot_classifier

    from mmfm.eval.features import default_transform, get_text_tokenizer
    from mmfm.eval.zero_shot import zero_shot
    ds = get_dataset("wds/cifar100", root=cls_root, split="test")
    ours = zero_shot(model, ds, progress=False, cache=None)
    ref_ds, loader = _reference_loader(cls_root, default_transform(model), retrieval=False)
    tok = get_text_tokenizer(model)
    classifier = zero_shot_classifier(model, tok, ref_ds.classes, ref_ds.templates, "cpu", amp=False)
    logits, target = run_classification(model, classifier, loader, "cpu", amp=False)
    assert ref_ds.classes == ds.classes
    assert np.array_equal(ours.metrics.labels, target.numpy())
    assert np.array_equal(ours.predictions, logits.argmax(dim=1).numpy())
    # A random tiny model predicts few classes, so compare the scores too: same classifier, same images
    from mmfm.eval.features import extract_image_features
    from mmfm.eval.zero_shot import build_zero_shot_classifier
    weights = build_zero_shot_classifier(model, ds.classes, ds.templates, use_cache=False)
    torch.testing.assert_close(weights, classifier.float(), atol=1e-6, rtol=0)
    feats = extract_image_features(model, ds, progress=False, use_cache=False).features
    scores = 100.0 * torch.nn.functional.normalize(feats, dim=-1) @ weights
    torch.testing.assert_close(scores, logits.float(), atol=1e-4, rtol=0)


def test_retrieval_recalls_equal_clip_benchmark(ret_root, model):
    from clip_benchmark.metrics.zeroshot_retrieval import evaluate

    from mmfm.eval.features import default_transform, get_text_tokenizer
    from mmfm.eval.retrieval import retrieval
    ds = get_dataset("wds/flickr30k", root=ret_root, split="test")
    assert ds.classes is None and len(ds.get_captions(4)) == 3
    ours = retrieval(model, ds, ks=(1, 5, 10), progress=False, cache=None)
    _, loader = _reference_loader(ret_root, default_transform(model), retrieval=True)
    ref = evaluate(model, loader, get_text_tokenizer(model), "cpu", amp=False, recall_k_list=[1, 5, 10])
    assert ours.num_texts == 3 * len(ds)
    # clip_benchmark averages in float32: compare the numbers of queries retrieved within K, exactly
    n_texts, n_images = ours.num_texts, len(ds)
    for k in (1, 5, 10):
        assert round(ours.metrics[f"t2i_R@{k}"] * n_texts) == round(ref[f"image_retrieval_recall@{k}"] * n_texts)
        assert round(ours.metrics[f"i2t_R@{k}"] * n_images) == round(ref[f"text_retrieval_recall@{k}"] * n_images)
    assert 0 < ours.metrics["t2i_R@5"] < 1      # neither trivially all nor nothing


def test_missing_offline_names_the_files_and_the_flag(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        get_dataset("wds/vtab/eurosat", root=tmp_path, split="test")
    msg = str(err.value)
    assert "\n" not in msg
    for part in ("test/nshards.txt", "classnames.txt", "zeroshot_classification_templates.txt", "--download",
                 "clip-benchmark/wds_vtab-eurosat"):
        assert part in msg


def test_download_fetches_the_hub_repo_into_the_data_root(tmp_path, cls_root, monkeypatch):
    """download=True asks huggingface_hub for clip_benchmark's repository (stubbed: tests never download)."""
    import shutil

    import huggingface_hub
    calls = []

    def fake_snapshot_download(repo_id, *, repo_type, local_dir, allow_patterns):
        calls.append((repo_id, repo_type, allow_patterns))
        shutil.copytree(cls_root, local_dir, dirs_exist_ok=True)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    ds = get_dataset("wds/vtab/eurosat", root=tmp_path, split="test", download=True)
    assert calls == [("clip-benchmark/wds_vtab-eurosat", "dataset", ["test/*", "classnames.txt",
                                                                     "zeroshot_classification_templates.txt",
                                                                     "dataset_type.txt"])]
    assert Path(ds.root) == tmp_path / "wds_vtab-eurosat" / "test" and len(ds) == 20
    get_dataset("wds/vtab/eurosat", root=tmp_path, split="test", download=True)   # already there: no fetch
    assert len(calls) == 1


def test_download_failure_is_one_clear_error(tmp_path, monkeypatch):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise ConnectionError("Failed to resolve 'huggingface.co'\nmore detail")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(FileNotFoundError, match=r"cannot download clip-benchmark/wds_cifar100 .*ConnectionError"):
        get_dataset("wds/cifar100", root=tmp_path, split="test", download=True)


def test_hub_repo_names_follow_clip_benchmark():
    assert hub_repo("wds/vtab/eurosat") == "clip-benchmark/wds_vtab-eurosat"
    assert hub_repo("wds/cifar100") == "clip-benchmark/wds_cifar100"


def test_shard_count_and_templates_validated(cls_root, tmp_path):
    import shutil
    root = tmp_path / "ds"
    shutil.copytree(cls_root, root)
    (root / "test" / "nshards.txt").write_text("5\n")
    with pytest.raises(FileNotFoundError, match="says 5 shard"):
        get_dataset("wds/cifar100", root=root)
    (root / "test" / "nshards.txt").write_text("3\n")
    (root / "zeroshot_classification_templates.txt").write_text("a photo of a {}.\n")
    with pytest.raises(ValueError, match=r"\{c\}"):
        get_dataset("wds/cifar100", root=root)


def test_cli_evaluates_a_wds_dataset_and_refuses_a_missing_one(cls_root, ret_root, tmp_path, capsys):
    from mmfm.cli import main
    assert main(["eval", "zeroshot", "--model", "ViT-tiny-test", "--dataset", "wds/cifar100",
                 "--data-root", str(cls_root), "--out", str(tmp_path / "zs")]) == 0
    assert "wds/cifar100" in capsys.readouterr().out
    assert main(["eval", "retrieval", "--model", "ViT-tiny-test", "--dataset", "wds/flickr30k",
                 "--data-root", str(ret_root)]) == 0
    capsys.readouterr()
    assert main(["eval", "zeroshot", "--model", "ViT-tiny-test", "--dataset", "wds/vtab/eurosat",
                 "--data-root", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert "--download" in err and "nshards.txt" in err
    assert main(["eval", "zeroshot", "--model", "ViT-tiny-test", "--dataset", "wds/cifar100"]) == 2
    assert "needs --data-root" in capsys.readouterr().err
