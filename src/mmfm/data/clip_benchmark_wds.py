"""clip_benchmark's WebDataset benchmark layout as a dataset: ``get_dataset("wds/vtab/eurosat", root=DIR)``.

The zero-shot and retrieval figures open_clip publishes were computed by clip_benchmark on datasets the
LAION team exported to the hub as ``clip-benchmark/wds_<name>`` repositories, one folder each::

    <root>/test/nshards.txt        how many shards: 0.tar ... (n-1).tar
    <root>/test/0.tar ...          <key>.webp|png|jpg + <key>.cls (class index) or <key>.txt (captions, one a line)
    <root>/train/...               the same, where the dataset has a train split
    <root>/classnames.txt          one class name a line, in label order
    <root>/zeroshot_classification_templates.txt   one template a line, "{c}" where the name goes
    <root>/dataset_type.txt        "retrieval" for caption sets (absent: classification)

Reading those exact files (not a torchvision copy of the same dataset) is what makes the split, the class
names and the prompts the published table's: VTAB's EuroSAT slice, CIFAR-100's raw torchvision names.
The tars are read by :class:`~mmfm.data.shard_folder.ShardFolder`'s indexer and decoded by the same
``record_to_sample`` as every other shard, in shard and tar order, which is the order clip_benchmark's
``build_wds_dataset`` streams them in.
"""

from __future__ import annotations

from pathlib import Path

from .base import MultimodalDataset, Sample
from .shard_folder import ShardFolder

__all__ = ["CLIP_BENCHMARK_WDS", "ClipBenchmarkWds", "hub_repo", "clip_benchmark_wds"]

#: The names clip_benchmark's benchmark/webdatasets.txt lists, plus the CIFAR and Food-101 exports the
#: open_clip results table uses. Any other ``wds/<name>`` works through :func:`clip_benchmark_wds` too.
CLIP_BENCHMARK_WDS = [
    "wds/mscoco_captions", "wds/flickr8k", "wds/flickr30k", "wds/imagenet1k", "wds/imagenetv2",
    "wds/imagenet_sketch", "wds/imagenet-a", "wds/imagenet-r", "wds/imagenet-o", "wds/objectnet", "wds/fer2013",
    "wds/voc2007", "wds/sun397", "wds/cars", "wds/fgvc_aircraft", "wds/mnist", "wds/stl10", "wds/gtsrb",
    "wds/country211", "wds/renderedsst2", "wds/cifar10", "wds/cifar100", "wds/food101",
    "wds/vtab/caltech101", "wds/vtab/cifar10", "wds/vtab/cifar100", "wds/vtab/clevr_count_all",
    "wds/vtab/clevr_closest_object_distance", "wds/vtab/diabetic_retinopathy", "wds/vtab/dmlab",
    "wds/vtab/dsprites_label_orientation", "wds/vtab/dsprites_label_x_position",
    "wds/vtab/dsprites_label_y_position", "wds/vtab/dtd", "wds/vtab/eurosat",
    "wds/vtab/kitti_closest_vehicle_distance", "wds/vtab/flowers", "wds/vtab/pets", "wds/vtab/pcam",
    "wds/vtab/resisc45", "wds/vtab/smallnorb_label_azimuth", "wds/vtab/smallnorb_label_elevation",
    "wds/vtab/svhn",
]

_METADATA = ("classnames.txt", "zeroshot_classification_templates.txt", "dataset_type.txt")


def hub_repo(name: str) -> str:
    """The hub dataset repository of ``name``: ``wds/vtab/eurosat`` -> ``clip-benchmark/wds_vtab-eurosat``.

    The ``/`` becomes ``-``, as in clip_benchmark's ``{dataset_cleaned}`` (cli.py), which is how the
    repositories are spelled on the hub.
    """
    short = name.split("/", 1)[1] if name.startswith("wds/") else name
    return "clip-benchmark/wds_" + short.replace("/", "-")


def _slug(name: str) -> str:
    return hub_repo(name).split("/", 1)[1]


def _dataset_folder(root: Path, name: str) -> Path:
    """``root`` itself when it holds the layout (clip_benchmark's ``--dataset_root``), else ``root/wds_<name>``
    (where ``download=True`` puts it, so one data root serves every benchmark)."""
    if any((root / f).is_file() for f in _METADATA) or any((root / s / "nshards.txt").is_file()
                                                           for s in ("train", "test")):
        return root
    return root / _slug(name)


def _download(name: str, folder: Path, split: str) -> None:
    """The split's shards and the metadata files from the hub (huggingface_hub resumes and skips what is there)."""
    try:
        from huggingface_hub import snapshot_download
        snapshot_download(hub_repo(name), repo_type="dataset", local_dir=str(folder),
                          allow_patterns=[f"{split}/*", *_METADATA])
    except Exception as exc:   # offline, no such repository, ...: one line saying what and where
        raise FileNotFoundError(f"{name}: cannot download {hub_repo(name)} from the Hugging Face hub into "
                                f"{folder} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                                f"copy {split}/nshards.txt, {split}/0.tar ... and {', '.join(_METADATA)} "
                                f"there by hand") from None


def _lines(path: Path) -> list[str] | None:
    """Non-empty stripped lines of a text file, ``None`` if it is absent."""
    if not path.is_file():
        return None
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _templates(path: Path) -> list[str] | None:
    """clip_benchmark fills templates with ``t.format(c=name)``; ours are filled with ``t.format(name)``."""
    lines = _lines(path)
    if lines is None:
        return None
    out = []
    for t in lines:
        try:
            t.format(c="x")
        except (KeyError, IndexError, ValueError):
            raise ValueError(f"{path}: template {t!r} must mark the class name with {{c}}") from None
        out.append(t.replace("{c}", "{}"))
    return out


class ClipBenchmarkWds(ShardFolder):
    """One split of a dataset in clip_benchmark's WebDataset layout (see the module docstring).

    Args:
        name: clip_benchmark's name, e.g. ``"wds/vtab/eurosat"`` (names the results and the hub repository).
        root: the dataset's folder, or a data root holding it as ``wds_<name>/``.
        split: ``"test"`` or ``"train"``.
        download: fetch what is missing from ``clip-benchmark/wds_<name>`` on the hub.
    """

    def __init__(self, name: str, root: str | Path | None, split: str = "test", download: bool = False) -> None:
        if root is None:
            raise ValueError(f"{name} needs --data-root DIR (root=...): the folder holding clip_benchmark's layout, "
                             f"or the one --download puts {_slug(name)}/ in")
        folder = _dataset_folder(Path(root).expanduser(), name)
        nshards_file = folder / split / "nshards.txt"
        if not nshards_file.is_file() and download:
            _download(name, folder, split)
        if not nshards_file.is_file():
            raise FileNotFoundError(
                f"{name}: {nshards_file} not found; expected clip_benchmark's layout in {folder}: {split}/nshards.txt, "
                f"{split}/0.tar ..., {', '.join(_METADATA)}; pass --download (download=True) to fetch "
                f"{hub_repo(name)} from the Hugging Face hub")
        try:
            nshards = int(nshards_file.read_text().strip())
        except ValueError:
            raise ValueError(f"{nshards_file} must hold the number of shards, got "
                             f"{nshards_file.read_text()[:40]!r}") from None
        tars = [folder / split / f"{i}.tar" for i in range(nshards)]
        missing = [t.name for t in tars if not t.is_file()]
        if nshards < 1 or missing:
            raise FileNotFoundError(f"{nshards_file} says {nshards} shard(s) but {missing[:3] or 'none'} "
                                    f"are missing from {folder / split}; pass --download to fetch them")
        kind = (_lines(folder / "dataset_type.txt") or ["classification"])[0].lower()
        if kind not in ("classification", "retrieval"):
            raise ValueError(f"{name}: dataset type {kind!r} ({folder / 'dataset_type.txt'}) is not supported; "
                             f"mmfm reads classification and retrieval sets")
        self.root, self.split, self.name, self.kind = str(folder / split), split, name, kind
        self.shards = [[t.name, t.stat().st_size, t.stat().st_mtime_ns] for t in tars]   # cache keys
        self._records = []
        for tar in tars:
            self._index(tar)
        self.label_name = "label"
        self.attribute_classes, self.attribute_templates = {}, {}
        self.classes = _lines(folder / "classnames.txt") if kind == "classification" else None
        self.templates = (_templates(folder / "zeroshot_classification_templates.txt")
                          or list(MultimodalDataset.templates))

    def get_sample(self, i: int) -> Sample:
        from .shards import record_to_sample
        record = self._record(i)
        captions = record.pop("txt", None)
        sample = record_to_sample(record)
        if captions is not None:   # clip_benchmark's retrieval sets: every caption of the image, one a line
            sample.captions = [c for c in captions.decode("utf-8").splitlines() if c.strip()]
        return sample

    def __repr__(self) -> str:
        return (f"ClipBenchmarkWds(name={self.name!r}, root={self.root!r}, split={self.split!r}, "
                f"kind={self.kind!r}, len={len(self)})")


def clip_benchmark_wds(name: str):
    """The factory ``get_dataset(name, root=..., split=..., download=...)`` calls for one wds name."""
    def factory(root: str | Path | None = None, split: str = "test", download: bool = False) -> ClipBenchmarkWds:
        return ClipBenchmarkWds(name, root, split=split, download=download)
    factory.__name__ = f"clip_benchmark_wds[{name}]"
    return factory
