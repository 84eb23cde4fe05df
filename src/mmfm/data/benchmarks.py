"""Standard image-classification benchmarks as :class:`MultimodalDataset` s.

CIFAR-10/100, Food-101, Flowers-102, DTD and EuroSAT, read from a local folder in each dataset's
official layout (the one torchvision downloads and reads; torchvision's classes do the reading), with
CLIP's class names and prompt templates (:mod:`mmfm.data.templates`) attached so that zero-shot
evaluation works out of the box.

Nothing is downloaded unless asked (``download=True``). When files are missing, a
``FileNotFoundError`` lists exactly which paths were expected under ``root``:

=============  ==========================================================================
cifar10        ``<root>/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``
cifar100       ``<root>/cifar-100-python/{train, test, meta}``
food101        ``<root>/food-101/meta/{train,test}.json`` and ``<root>/food-101/images/<class>/``
flowers102     ``<root>/flowers-102/{imagelabels.mat, setid.mat}`` and ``<root>/flowers-102/jpg/``
dtd            ``<root>/dtd/dtd/labels/{train,val,test}<partition>.txt`` and ``<root>/dtd/dtd/images/``
eurosat        ``<root>/eurosat/2750/<ClassName>/*.jpg`` (RGB version)
=============  ==========================================================================

Labels follow torchvision exactly (e.g. Flowers-102 label ``l`` of ``imagelabels.mat`` is class
``l - 1``), and class names are listed in that label order.

Checksums: torchvision verifies the MD5 of the CIFAR and Flowers files on every load. We check
presence only by default (``verify_checksums=False``) - fast, and it accepts re-packed copies;
downloads are always verified.

Samples carry no captions (``captions == []``): label-only data, for which the data pipeline makes a
caption from the templates and the class name when one is needed.

Importing this module must not import :mod:`mmfm.data` (it is imported *by* it); the templates come
from its sibling :mod:`mmfm.data.templates`, which imports nothing.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import PIL.Image
from torchvision import datasets as tv_datasets  # already loaded with torchvision itself

from .templates import EUROSAT_FOLDER_TO_CLASSNAME, FLOWERS102_CLASSNAMES, get_templates, prettify_classname

from .base import MultimodalDataset, Sample

__all__ = ["TorchvisionClassification", "cifar10", "cifar100", "food101", "flowers102", "dtd", "eurosat",
           "register_benchmark_datasets", "BENCHMARKS"]


class TorchvisionClassification(MultimodalDataset):
    """A torchvision ``(image, label)`` dataset seen as label-only :class:`Sample` s.

    ``indices`` selects a subset (EuroSAT has no official split, so its splits are index lists over
    the whole folder).
    """

    def __init__(self, name: str, tv_dataset, classnames: Sequence[str], templates: Sequence[str], split: str,
                 root: str | Path, indices: Sequence[int] | None = None):
        self.name = name
        self.split = split
        self.root = Path(root)
        self.tv = tv_dataset
        self.classes = list(classnames)
        self.attribute_classes = {}
        self.templates = list(templates)
        self.label_name = "class"
        self.indices = np.arange(len(tv_dataset)) if indices is None else np.asarray(indices, dtype=np.int64)
        # Labels without decoding images: torchvision keeps them in `targets` (CIFAR, ImageFolder)
        # or `_labels` (Food-101, Flowers-102, DTD).
        labels = getattr(tv_dataset, "targets", None)
        if labels is None:
            labels = getattr(tv_dataset, "_labels", None)
        self._labels = None if labels is None else np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def get_sample(self, i: int) -> Sample:
        image, label = self.tv[int(self.indices[i])]
        if not isinstance(image, PIL.Image.Image):
            raise TypeError(f"{self.name}: expected a PIL image from torchvision, got {type(image).__name__}")
        return Sample(image=image.convert("RGB"), captions=[], label=int(label))

    def get_label(self, i: int) -> int:
        if self._labels is not None:
            return int(self._labels[self.indices[i]])
        return int(self.tv[int(self.indices[i])][1])

    def get_captions(self, i: int) -> list[str]:
        return []

    def cache_key(self) -> str:
        """Identifies the data for feature caches: dataset, split, folder and size."""
        return f"{self.name}|{self.split}|{self.root.resolve()}|{len(self)}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, root={str(self.root)!r}, len={len(self)})"


# ---------------------------------------------------------------------------------------------
# Helpers
def _require(root: Path, dataset: str, paths: Sequence[Path], hint: str = "") -> None:
    """Raise a FileNotFoundError naming every expected path that is missing."""
    missing = [p for p in paths if not p.exists()]
    if missing:
        listed = "\n  ".join(str(p) for p in missing)
        raise FileNotFoundError(
            f"{dataset} not found under {root}: missing\n  {listed}\n"
            f"Place the official files there (the layout torchvision uses) or download them with "
            f"--download (download=True in Python; needs internet).{(' ' + hint) if hint else ''}")


def _check_split(split: str, allowed: Sequence[str], dataset: str) -> None:
    if split not in allowed:
        raise ValueError(f"{dataset}: split must be one of {list(allowed)}, got {split!r}")


# torchvision verifies the MD5 of every CIFAR / Flowers file on each load. Its
# ``check_integrity(path, md5=None)`` is a presence test, so subclasses that clear the recorded
# checksums check presence only, and everything else (paths, parsing, label order) stays
# torchvision's. Defined at module level so that DataLoader workers can unpickle them.
class _CIFAR10PresenceOnly(tv_datasets.CIFAR10):
    train_list = [[f, None] for f, _ in tv_datasets.CIFAR10.train_list]
    test_list = [[f, None] for f, _ in tv_datasets.CIFAR10.test_list]
    meta = {**tv_datasets.CIFAR10.meta, "md5": None}


class _CIFAR100PresenceOnly(tv_datasets.CIFAR100):
    train_list = [[f, None] for f, _ in tv_datasets.CIFAR100.train_list]
    test_list = [[f, None] for f, _ in tv_datasets.CIFAR100.test_list]
    meta = {**tv_datasets.CIFAR100.meta, "md5": None}


class _Flowers102PresenceOnly(tv_datasets.Flowers102):
    _file_dict = {k: (f, None) for k, (f, _) in tv_datasets.Flowers102._file_dict.items()}


def _templates(name: str) -> list[str]:
    return get_templates(name)


def _pretty(names: Sequence[str]) -> list[str]:
    return [prettify_classname(n) for n in names]


# ---------------------------------------------------------------------------------------------
# Datasets
def _cifar(name: str, root, split: str, download: bool, verify_checksums: bool):
    _check_split(split, ("train", "test"), name)
    root = Path(root).expanduser()
    cls = tv_datasets.CIFAR10 if name == "cifar10" else tv_datasets.CIFAR100
    if download:
        cls(str(root), train=split == "train", download=True)   # verifies the archive's MD5
    folder = root / cls.base_folder
    _require(root, name, [folder / f for f, _ in cls.train_list + cls.test_list] + [folder / cls.meta["filename"]])
    if not verify_checksums:
        cls = _CIFAR10PresenceOnly if name == "cifar10" else _CIFAR100PresenceOnly
    tv = cls(str(root), train=split == "train")
    # Label names from the files (CIFAR-100: 'aquarium_fish' -> 'aquarium fish', as CLIP names them).
    return TorchvisionClassification(name, tv, _pretty(tv.classes), _templates(name), split, root)


def cifar10(root: str | Path, split: str = "test", download: bool = False,
            verify_checksums: bool = False) -> TorchvisionClassification:
    """CIFAR-10 (50,000 train / 10,000 test, 32x32)."""
    return _cifar("cifar10", root, split, download, verify_checksums)


def cifar100(root: str | Path, split: str = "test", download: bool = False,
             verify_checksums: bool = False) -> TorchvisionClassification:
    """CIFAR-100 fine labels (50,000 train / 10,000 test, 32x32)."""
    return _cifar("cifar100", root, split, download, verify_checksums)


def food101(root: str | Path, split: str = "test", download: bool = False) -> TorchvisionClassification:
    """Food-101 (75,750 train / 25,250 test)."""
    _check_split(split, ("train", "test"), "food101")
    root = Path(root).expanduser()
    if download:
        tv_datasets.Food101(str(root), split=split, download=True)
    base = root / "food-101"
    _require(root, "food101", [base / "meta" / f"{split}.json", base / "images"])
    tv = tv_datasets.Food101(str(root), split=split)
    return TorchvisionClassification("food101", tv, _pretty(tv.classes), _templates("food101"), split, root)


def flowers102(root: str | Path, split: str = "test", download: bool = False,
               verify_checksums: bool = False) -> TorchvisionClassification:
    """Oxford Flowers-102 (1,020 train / 1,020 val / 6,149 test); CLIP reports mean per-class accuracy."""
    _check_split(split, ("train", "val", "test"), "flowers102")
    root = Path(root).expanduser()
    if download:
        tv_datasets.Flowers102(str(root), split=split, download=True)
    base = root / "flowers-102"
    _require(root, "flowers102", [base / "imagelabels.mat", base / "setid.mat", base / "jpg"])
    cls = tv_datasets.Flowers102 if verify_checksums else _Flowers102PresenceOnly
    tv = cls(str(root), split=split)
    return TorchvisionClassification("flowers102", tv, FLOWERS102_CLASSNAMES, _templates("flowers102"), split, root)


def dtd(root: str | Path, split: str = "test", partition: int = 1, download: bool = False) -> TorchvisionClassification:
    """Describable Textures (47 classes; official partition ``partition`` of 10, 1,880 images per split)."""
    _check_split(split, ("train", "val", "test"), "dtd")
    root = Path(root).expanduser()
    if download:
        tv_datasets.DTD(str(root), split=split, partition=partition, download=True)
    data = root / "dtd" / "dtd"
    _require(root, "dtd", [data / "labels" / f"{split}{partition}.txt", data / "images"])
    tv = tv_datasets.DTD(str(root), split=split, partition=partition)
    ds = TorchvisionClassification("dtd", tv, _pretty(tv.classes), _templates("dtd"), split, root)
    ds.partition = partition
    return ds


EUROSAT_FRACTIONS = (0.6, 0.2, 0.2)


def eurosat_split_indices(targets: Sequence[int], split: str, seed: int = 0,
                          fractions: Sequence[float] = EUROSAT_FRACTIONS) -> np.ndarray:
    """EuroSAT has no official split: per class, shuffle (``seed``) and cut into train/val/test by
    ``fractions`` (default 60/20/20, the proportions of the VTAB split clip_benchmark uses). The splits
    are disjoint, cover every image, keep the class balance, and depend only on the file list."""
    targets = np.asarray(targets)
    rng = np.random.default_rng(seed)
    out = []
    which = {"train": 0, "val": 1, "test": 2}[split]
    for c in np.unique(targets):
        idx = np.flatnonzero(targets == c)
        idx = idx[rng.permutation(len(idx))]
        cuts = np.round(np.cumsum(fractions) / np.sum(fractions) * len(idx)).astype(int)
        parts = np.split(idx, cuts[:-1])
        out.append(np.sort(parts[which]))
    return np.sort(np.concatenate(out)) if out else np.empty(0, dtype=np.int64)


def eurosat(root: str | Path, split: str = "test", download: bool = False, seed: int = 0,
            fractions: Sequence[float] = EUROSAT_FRACTIONS) -> TorchvisionClassification:
    """EuroSAT RGB (27,000 64x64 satellite images, 10 land-use classes), split by :func:`eurosat_split_indices`."""
    _check_split(split, ("train", "val", "test"), "eurosat")
    root = Path(root).expanduser()
    if download:
        tv_datasets.EuroSAT(str(root), download=True)
    folder = root / "eurosat" / "2750"
    _require(root, "eurosat", [folder], hint="Expected one sub-folder per class, e.g. 2750/AnnualCrop/*.jpg.")
    if not any(p.is_dir() for p in folder.iterdir()):
        raise FileNotFoundError(f"eurosat: {folder} has no class folders (expected AnnualCrop/, Forest/, ...)")
    tv = tv_datasets.EuroSAT(str(root))
    names = [EUROSAT_FOLDER_TO_CLASSNAME.get(c, prettify_classname(c)) for c in tv.classes]
    indices = eurosat_split_indices(tv.targets, split, seed, fractions)
    ds = TorchvisionClassification("eurosat", tv, names, _templates("eurosat"), split, root, indices)
    ds.seed = seed
    return ds


BENCHMARKS: dict[str, Callable[..., MultimodalDataset]] = {
    "cifar10": cifar10, "cifar100": cifar100, "food101": food101, "flowers102": flowers102, "dtd": dtd,
    "eurosat": eurosat,
}


def register_benchmark_datasets(overwrite: bool = False) -> None:
    """Register the benchmarks with :func:`mmfm.data.register_dataset`:
    cifar10, cifar100, food101, flowers102, dtd, eurosat, flickr30k, cc3m_tsv.

    Every factory takes ``root`` (the data folder) and ``split`` plus its own options, e.g.
    ``get_dataset("cifar10", root="~/data", split="train")``.
    """
    from . import register_dataset
    from .flickr import cc3m_tsv, flickr30k
    for name, factory in {**BENCHMARKS, "flickr30k": flickr30k, "cc3m_tsv": cc3m_tsv}.items():
        register_dataset(name, factory, overwrite=overwrite)
