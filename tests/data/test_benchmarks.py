"""Benchmark datasets read from tiny fakes written in each dataset's official on-disk layout."""
import json
import pickle

import numpy as np
import PIL.Image
import pytest

from mmfm.data import benchmarks as B
from mmfm.data.base import MultimodalDataset
from mmfm.data import templates as T


def _jpg(path, color=(255, 0, 0), size=(12, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.new("RGB", size, color).save(path)


def _pickle(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def _cifar_rows(labels, seed):
    rng = np.random.default_rng(seed)
    return {"data": rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8), "labels": list(labels)}


@pytest.fixture
def cifar10_root(tmp_path):
    base = tmp_path / "cifar-10-batches-py"
    for i in range(1, 6):
        _pickle(base / f"data_batch_{i}", _cifar_rows([i % 10, (i + 3) % 10], seed=i))
    _pickle(base / "test_batch", _cifar_rows([3, 5, 7], seed=9))
    _pickle(base / "batches.meta", {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                                    "horse", "ship", "truck"]})
    return tmp_path


def test_cifar10(cifar10_root):
    test = B.cifar10(cifar10_root, split="test")
    train = B.cifar10(cifar10_root, split="train")
    assert isinstance(test, MultimodalDataset) and len(test) == 3 and len(train) == 10
    assert test.classes == list(T.CIFAR10_CLASSNAMES)
    assert test.templates == list(T.CIFAR_TEMPLATES) and len(test.templates) == 18
    s = test[1]
    assert s.label == 5 and s.image.mode == "RGB" and s.image.size == (32, 32) and s.captions == []
    assert [test.get_label(i) for i in range(3)] == [3, 5, 7]
    # The pixels are the pickled rows (CHW planes -> HWC image).
    raw = pickle.load(open(cifar10_root / "cifar-10-batches-py" / "test_batch", "rb"))["data"][1]
    np.testing.assert_array_equal(np.asarray(s.image), raw.reshape(3, 32, 32).transpose(1, 2, 0))
    task = test.zero_shot_tasks()["class"]
    assert task.prompts()[0][0] == "a photo of a airplane."
    # torchvision's MD5 check rejects the fake; presence-only (the default) accepts it.
    with pytest.raises(RuntimeError):
        B.cifar10(cifar10_root, split="test", verify_checksums=True)


def test_cifar100(tmp_path):
    base = tmp_path / "cifar-100-python"
    names = sorted(n.replace(" ", "_") for n in T.CIFAR100_CLASSNAMES)
    _pickle(base / "train", {"data": np.zeros((2, 3072), np.uint8), "fine_labels": [1, 99], "coarse_labels": [0, 0]})
    _pickle(base / "test", {"data": np.zeros((1, 3072), np.uint8), "fine_labels": [47], "coarse_labels": [0]})
    _pickle(base / "meta", {"fine_label_names": names, "coarse_label_names": ["x"]})
    ds = B.cifar100(tmp_path, split="test")
    assert ds.classes == list(T.CIFAR100_CLASSNAMES)               # 'aquarium_fish' -> 'aquarium fish'
    assert ds[0].label == 47 and ds.classes[47] == "maple tree"


def test_food101(tmp_path):
    base = tmp_path / "food-101"
    meta = {"apple_pie": ["apple_pie/1", "apple_pie/2"], "baby_back_ribs": ["baby_back_ribs/3"]}
    (base / "meta").mkdir(parents=True)
    (base / "meta" / "test.json").write_text(json.dumps(meta))
    (base / "meta" / "classes.txt").write_text("apple_pie\nbaby_back_ribs\n")
    for cls, items in meta.items():
        for it in items:
            _jpg(base / "images" / f"{it}.jpg")
    ds = B.food101(tmp_path, split="test")
    assert ds.classes == ["apple pie", "baby back ribs"] and len(ds) == 3
    assert [ds.get_label(i) for i in range(3)] == [0, 0, 1] and ds[2].label == 1
    assert ds.templates == ["a photo of {}, a type of food."]
    with pytest.raises(FileNotFoundError, match=r"food-101/meta/train\.json"):
        B.food101(tmp_path, split="train")


def test_flowers102(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    base = tmp_path / "flowers-102"
    labels = np.array([[1, 1, 2, 77, 102, 2]])          # image_00001 .. image_00006, 1-based classes
    base.mkdir(parents=True)
    scipy_io.savemat(base / "imagelabels.mat", {"labels": labels})
    scipy_io.savemat(base / "setid.mat", {"trnid": np.array([[1, 3]]), "valid": np.array([[2, 6]]),
                                          "tstid": np.array([[4, 5]])})
    for i in range(1, 7):
        _jpg(base / "jpg" / f"image_{i:05d}.jpg")
    test = B.flowers102(tmp_path, split="test")
    assert len(test) == 2 and [test.get_label(i) for i in range(2)] == [76, 101]
    assert test.classes == list(T.FLOWERS102_CLASSNAMES) and len(test.classes) == 102
    assert test.classes[test[1].label] == "blackberry lily"
    assert test.templates == ["a photo of a {}, a type of flower."]
    assert [B.flowers102(tmp_path, split="val").get_label(i) for i in range(2)] == [0, 1]


def test_dtd(tmp_path):
    data = tmp_path / "dtd" / "dtd"
    (data / "labels").mkdir(parents=True)
    (data / "labels" / "test1.txt").write_text("banded/banded_0001.jpg\nzigzagged/zigzagged_0002.jpg\n")
    _jpg(data / "images" / "banded" / "banded_0001.jpg")
    _jpg(data / "images" / "zigzagged" / "zigzagged_0002.jpg")
    ds = B.dtd(tmp_path, split="test")
    assert ds.classes == ["banded", "zigzagged"] and [s.label for s in ds] == [0, 1]
    assert len(ds.templates) == 8 and ds.templates[0] == "a photo of a {} texture."
    with pytest.raises(FileNotFoundError, match=r"labels/test2\.txt"):
        B.dtd(tmp_path, split="test", partition=2)


def test_eurosat_split_and_names(tmp_path):
    folder = tmp_path / "eurosat" / "2750"
    for cls in ("AnnualCrop", "HerbaceousVegetation", "SeaLake"):
        for i in range(10):
            _jpg(folder / cls / f"{cls}_{i}.jpg", size=(64, 64))
    splits = {s: B.eurosat(tmp_path, split=s) for s in ("train", "val", "test")}
    ds = splits["test"]
    assert ds.classes == ["annual crop land", "brushland or shrubland", "lake or sea"]
    assert ds.templates[0] == "a centered satellite photo of {}."
    assert [len(splits[s]) for s in ("train", "val", "test")] == [18, 6, 6]
    all_idx = np.concatenate([splits[s].indices for s in splits])
    assert sorted(all_idx.tolist()) == list(range(30))                     # disjoint and complete
    assert np.bincount([ds.get_label(i) for i in range(len(ds))]).tolist() == [2, 2, 2]
    assert ds[0].image.size == (64, 64)
    np.testing.assert_array_equal(B.eurosat(tmp_path, split="test").indices, ds.indices)   # deterministic
    assert not np.array_equal(B.eurosat(tmp_path, split="test", seed=1).indices, ds.indices)


@pytest.mark.parametrize("name,expected", [
    ("cifar10", "cifar-10-batches-py/data_batch_1"),
    ("cifar100", "cifar-100-python/train"),
    ("food101", "food-101/meta/test.json"),
    ("flowers102", "flowers-102/imagelabels.mat"),
    ("dtd", "dtd/dtd/labels/test1.txt"),
    ("eurosat", "eurosat/2750"),
])
def test_missing_data_names_the_expected_files(tmp_path, name, expected):
    with pytest.raises(FileNotFoundError) as err:
        B.BENCHMARKS[name](tmp_path, split="test")
    assert expected in str(err.value) and "download=True" in str(err.value)


def test_registered_by_name(cifar10_root):
    from mmfm.data import available_datasets, get_dataset
    B.register_benchmark_datasets()
    B.register_benchmark_datasets()        # idempotent
    assert {"cifar10", "cifar100", "food101", "flowers102", "dtd", "eurosat", "flickr30k",
            "cc3m_tsv"} <= set(available_datasets())
    ds = get_dataset("cifar10", root=cifar10_root, split="test")
    assert len(ds) == 3 and "cifar10|test|" in ds.cache_key()


def test_class_lists_match_clip():
    assert len(T.CIFAR100_CLASSNAMES) == 100 and len(T.FOOD101_CLASSNAMES) == 101
    assert len(T.FLOWERS102_CLASSNAMES) == 102 and len(T.DTD_CLASSNAMES) == 47 and len(T.EUROSAT_CLASSNAMES) == 10
    # Label order = sorted folder / file names, which our lists follow.
    assert list(T.CIFAR100_CLASSNAMES) == sorted(T.CIFAR100_CLASSNAMES)
    assert list(T.DTD_CLASSNAMES) == sorted(T.DTD_CLASSNAMES)
    assert list(T.FOOD101_CLASSNAMES) == [n.replace("_", " ") for n in sorted(n.replace(" ", "_") for n in
                                                                              T.FOOD101_CLASSNAMES)]
    assert T.get_templates("unknown") == ["a photo of a {}."]
    assert all("{}" in t for ts in T.TEMPLATES.values() for t in ts)
