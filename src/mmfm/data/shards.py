"""WebDataset shards: write any dataset to tar shards and stream them back.

Large datasets are best read as a few big sequential files rather than
millions of small ones.  The WebDataset format is a plain tar file in which
the files of one sample share a key::

    000000042.jpg    the image (or .png)
    000000042.txt    the first caption (what most WebDataset tools expect)
    000000042.json   {"captions": [...], "label": 3, "attributes": {...}, "index": 42}

:func:`write_shards` writes ``<prefix>-000000.tar, <prefix>-000001.tar, ...``
plus ``<prefix>.json`` with the dataset's metadata (class names, templates),
so :class:`ShardDataset` can offer the same zero-shot tasks as the source.
:class:`ShardDataset` streams :class:`~mmfm.data.base.Sample` objects with the
``webdataset`` library, splitting shards across DDP nodes and DataLoader
workers; :meth:`ShardDataset.with_transforms` yields exactly the dicts that
:class:`~mmfm.data.pipeline.ImageTextView` produces.

``webdataset`` is imported lazily (it takes over a second to import).
"""

from __future__ import annotations

import glob
import io
import itertools
import json
import logging
import os
import random
import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import PIL.Image
import torch.utils.data

from .base import MultimodalDataset, Sample, ZeroShotTask
from .pipeline import CaptionMode, ImageTransform, SampleEncoder, Tokenizer

__all__ = ["ShardDataset", "ShardImageTextView", "WrittenShards", "shards_from_folder", "write_shards"]

logger = logging.getLogger(__name__)

_IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
_SHARD_NAME = re.compile(r"^(?P<prefix>.*)-\d+\.tar$")


# --------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------
@dataclass
class WrittenShards:
    """What :func:`write_shards` produced."""

    paths: list[str]
    """Shard files, in order."""
    count: int
    """Samples written."""
    skipped: int = 0
    """Samples skipped because their image could not be read."""
    metadata_path: str | None = None
    pattern: str = ""
    """Brace pattern covering all shards, e.g. ``out/shard-{000000..000003}.tar``."""
    metadata: dict[str, Any] = field(default_factory=dict)


def _encode_image(image: PIL.Image.Image, fmt: str, quality: int) -> bytes:
    buf = io.BytesIO()
    if fmt == "jpg":
        image.convert("RGB").save(buf, format="JPEG", quality=quality)
    else:
        image.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


def _dataset_metadata(dataset: MultimodalDataset) -> dict[str, Any]:
    return {
        "name": dataset.name,
        "label_name": dataset.label_name,
        "classes": dataset.classes,
        "attribute_classes": dataset.attribute_classes,
        "templates": dataset.templates,
        "attribute_templates": dataset.attribute_templates,
    }


def write_shards(
    dataset_or_samples: MultimodalDataset | Iterable[Sample],
    out_dir: str | Path,
    maxcount: int = 1000,
    prefix: str = "shard",
    image_format: str = "jpg",
    quality: int = 95,
    metadata: dict[str, Any] | None = None,
) -> WrittenShards:
    """Write samples as WebDataset tar shards of at most ``maxcount`` samples.

    Args:
        dataset_or_samples: a :class:`MultimodalDataset` (its metadata is
            saved too, and unreadable images are skipped and counted) or any
            iterable of :class:`Sample`.
        out_dir: output folder (created).
        maxcount: samples per shard.
        prefix: shard file prefix: ``<prefix>-000000.tar``.
        image_format: ``"jpg"`` (small; lossy) or ``"png"`` (lossless).
        quality: JPEG quality.
        metadata: extra / overriding metadata for ``<prefix>.json``.
    """
    import webdataset as wds

    if image_format not in ("jpg", "png"):
        raise ValueError(f"image_format must be 'jpg' or 'png', got {image_format!r}")
    if maxcount < 1:
        raise ValueError("maxcount must be >= 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    is_dataset = isinstance(dataset_or_samples, MultimodalDataset)
    meta: dict[str, Any] = _dataset_metadata(dataset_or_samples) if is_dataset else {}
    meta.update(metadata or {})

    def indexed() -> Iterator[tuple[int, Sample | None]]:
        if is_dataset:
            for i in range(len(dataset_or_samples)):
                try:
                    yield i, dataset_or_samples[i]
                except OSError as exc:  # corrupt image: leave it out of the shards
                    logger.warning("write_shards: skipping sample %d: %s", i, exc)
                    yield i, None
        else:
            yield from enumerate(dataset_or_samples)

    paths: list[str] = []
    count = skipped = 0
    pattern = str(out / f"{prefix}-%06d.tar")
    with wds.ShardWriter(pattern, maxcount=maxcount, verbose=0, post=paths.append) as sink:
        for i, sample in indexed():
            if sample is None:
                skipped += 1
                continue
            record: dict[str, Any] = {
                "__key__": f"{i:09d}",  # no dots: webdataset splits keys at the first dot
                image_format: _encode_image(sample.image, image_format, quality),
                "json": {
                    "captions": list(sample.captions),
                    "label": sample.label,
                    "attributes": dict(sample.attributes),
                    "index": i,
                },
            }
            if sample.captions:
                record["txt"] = sample.captions[0]
            sink.write(record)
            count += 1
    if count == 0:  # ShardWriter always opens a first shard; don't leave an empty tar behind
        for p in paths:
            os.remove(p)
        paths = []
    meta.update({"num_samples": count, "shards": [os.path.basename(p) for p in paths]})
    meta_path = out / f"{prefix}.json"
    meta_path.write_text(json.dumps(meta, indent=2))
    if len(paths) > 1:
        brace = str(out / f"{prefix}-{{{0:06d}..{len(paths) - 1:06d}}}.tar")
    else:
        brace = paths[0] if paths else ""
    return WrittenShards(paths, count, skipped, str(meta_path), brace, meta)


def shards_from_folder(
    image_root: str | Path,
    captions_file: str | Path,
    out_dir: str | Path,
    *,
    image_column: str | None = None,
    caption_column: str | None = "caption",
    label_column: str | None = None,
    maxcount: int = 1000,
    prefix: str = "shard",
    image_format: str = "jpg",
    quality: int = 95,
) -> WrittenShards:
    """Convert an image folder + CSV/JSONL annotations (see
    :class:`~mmfm.data.custom.CustomDataset`, which validates them first) to
    shards.  Images are re-encoded, so unreadable files are found and left
    out here, once, instead of in every training run.  Backs ``mmfm shards``."""
    from .custom import CustomDataset

    dataset = CustomDataset(
        image_root,
        annotations=captions_file,
        image_column=image_column,
        caption_column=caption_column,
        label_column=label_column,
    )
    return write_shards(dataset, out_dir, maxcount=maxcount, prefix=prefix, image_format=image_format, quality=quality)


# --------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------
def expand_shard_urls(urls: str | Path | Iterable[str | Path]) -> list[str]:
    """Shard list from a folder (all ``*.tar``), a glob (``data/*.tar``), a
    brace pattern (``data/shard-{000000..000009}.tar``, webdataset syntax,
    also ``::``-separated lists) or an explicit list."""
    if isinstance(urls, str | Path):
        s = str(urls)
        if os.path.isdir(s):
            found = sorted(glob.glob(os.path.join(s, "*.tar")))
        elif any(ch in s for ch in "*?[") and "://" not in s:
            found = sorted(glob.glob(s))
        else:
            from webdataset.shardlists import expand_urls

            found = expand_urls(s)
    else:
        found = [str(u) for u in urls]
    if not found:
        raise FileNotFoundError(f"no shards found for {urls!r}")
    return found


def _find_metadata(first_url: str) -> dict[str, Any]:
    """``<prefix>.json`` next to a local ``<prefix>-NNNNNN.tar``, if any."""
    m = _SHARD_NAME.match(first_url)
    if m and "://" not in first_url:
        path = Path(m.group("prefix") + ".json")
        if path.is_file():
            return json.loads(path.read_text())
    return {}


def record_to_sample(record: dict[str, Any]) -> Sample:
    """Decode a raw webdataset record (bytes per extension) into a Sample.

    Accepts our own layout and common third-party ones (img2dataset: ``jpg`` +
    ``txt`` + ``json``; classification shards: ``cls``).  Raises ``OSError``
    if the image cannot be decoded and ``ValueError`` if the rest cannot
    (bad JSON, non-UTF-8 ``.txt``, non-integer ``.cls``, mistyped fields).
    ``"captions": "a cat"`` is read as one caption.
    """
    img_key = next((k for k in _IMAGE_KEYS if k in record), None)
    if img_key is None:
        raise OSError(f"record {record.get('__key__')!r} has no image (looked for {_IMAGE_KEYS})")
    try:
        with PIL.Image.open(io.BytesIO(record[img_key])) as img:
            image = img.convert("RGB")
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError... on bad bytes
        raise OSError(f"cannot decode image of record {record.get('__key__')!r}: {exc}") from exc
    meta = json.loads(record["json"]) if "json" in record else {}   # ValueError on bad JSON
    if not isinstance(meta, dict):
        raise ValueError(f"its .json is a {type(meta).__name__}, not an object")
    captions = meta.get("captions")
    if captions is None:
        captions = [record["txt"].decode("utf-8").strip()] if "txt" in record else []   # ValueError if not UTF-8
    if isinstance(captions, str):   # one caption; list("a cat") would be five one-character captions
        captions = [captions]
    if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
        raise ValueError(f"'captions' must be a list of strings, got {captions!r:.80}")
    label = meta.get("label")
    if label is None and "cls" in record:
        label = int(record["cls"].decode("ascii").strip())            # ValueError if not an integer
    if label is not None and (not isinstance(label, int) or isinstance(label, bool)):
        raise ValueError(f"'label' must be an integer, got {label!r:.80}")
    attributes = meta.get("attributes", {})
    if not isinstance(attributes, dict):
        raise ValueError(f"'attributes' must be an object, got {attributes!r:.80}")
    return Sample(image=image, captions=[c for c in captions if c], label=label, attributes=attributes)


def _record_index(record: dict[str, Any]) -> int:
    """Dataset index of a record: ours store it; otherwise a stable hash of
    the key (needed only to seed the caption draw)."""
    if "json" in record:
        try:
            meta = json.loads(record["json"])
            if isinstance(meta, dict) and isinstance(meta.get("index"), int):
                return meta["index"]
        except ValueError:
            pass
    return zlib.crc32(str(record.get("__key__", "")).encode())


class ShardDataset(torch.utils.data.IterableDataset):
    """Stream :class:`Sample` objects from WebDataset tar shards.

    Args:
        urls: folder, glob, brace pattern or list of shard paths/URLs.
        shuffle_shards: shuffle the shard order each epoch (same order on every
            node, derived from ``(seed, epoch)``).
        shuffle_buffer: >1 enables webdataset's buffered sample shuffle.
        seed: seed of both shuffles.
        split_by_node: give each DDP rank a disjoint subset of shards (needs at
            least ``world_size`` shards, ideally a multiple).
        split_by_worker: give each DataLoader worker a disjoint subset.
        resampled: draw shards with replacement forever (the usual choice for
            multi-node training with uneven shards; bound the epoch in the
            trainer).  Disables node/worker splitting.
        metadata: explicit ``<prefix>.json`` path; by default looked up next to
            the first shard.

    Records that cannot be decoded (corrupt image, bad JSON, non-UTF-8 text,
    bad ``.cls``; and, through :meth:`with_transforms`, samples with neither a
    caption nor a label) are skipped with a warning naming the shard and key
    (count in ``self.skipped`` when iterating in the main process; through :meth:`with_transforms` and
    :func:`~mmfm.data.pipeline.collate_skip_none` they are counted per batch).
    """

    def __init__(
        self,
        urls: str | Path | Iterable[str | Path],
        shuffle_shards: bool = False,
        shuffle_buffer: int = 0,
        seed: int = 0,
        split_by_node: bool = True,
        split_by_worker: bool = True,
        resampled: bool = False,
        metadata: str | Path | None = None,
    ) -> None:
        super().__init__()
        self.urls = expand_shard_urls(urls)
        self.shuffle_shards = shuffle_shards
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.split_by_node = split_by_node
        self.split_by_worker = split_by_worker
        self.resampled = resampled
        self.epoch = 0
        self.start_batches, self.batch_size = 0, 1
        self.skipped = 0
        meta = json.loads(Path(metadata).read_text()) if metadata else _find_metadata(self.urls[0])
        self.metadata = meta
        self.name: str = meta.get("name", "shards")
        self.label_name: str = meta.get("label_name", "label")
        self.classes: list[str] | None = meta.get("classes")
        self.attribute_classes: dict[str, list[str]] = meta.get("attribute_classes") or {}
        self.templates: list[str] = meta.get("templates") or list(MultimodalDataset.templates)
        self.attribute_templates: dict[str, list[str]] = meta.get("attribute_templates") or {}
        self.num_samples: int | None = meta.get("num_samples")

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch used by the shuffles (and caption draws); it starts at its beginning."""
        self.epoch = int(epoch)
        self.start_batches = 0

    def resume_at(self, batches: int, batch_size: int) -> None:
        """Start this epoch's stream after ``batches`` batches of ``batch_size``
        records, as a DataLoader (with any number of workers) delivered them.

        A DataLoader takes batch ``k`` from worker ``k % W``, each worker
        batching its own stream. So worker ``l`` had made ``ceil((batches - l) / W)``
        of them, and the resumed loader's worker ``p`` must act as worker
        ``(p + batches) % W`` (shards, shuffle seed) and skip that many records,
        before anything is decoded. Exact while no worker has run out of
        records (uneven shards can make one finish early in the epoch's last
        rounds). ``set_epoch`` starts the next epoch at its beginning.
        """
        self.start_batches, self.batch_size = int(batches), int(batch_size)

    def _logical_worker(self, worker: int, num_workers: int) -> tuple[int, int]:
        """(the worker of an uninterrupted epoch this one stands for, records it already delivered)."""
        logical = (worker + self.start_batches) % num_workers
        made = max(0, -(-(self.start_batches - logical) // num_workers))
        return logical, made * self.batch_size

    def zero_shot_tasks(self) -> dict[str, ZeroShotTask]:
        # Same rule as map-style datasets; that method only reads the
        # metadata attributes this class also has.
        return MultimodalDataset.zero_shot_tasks(self)  # type: ignore[arg-type]

    def _pipeline(self):
        import webdataset as wds

        rank, _, worker, num_workers = wds.utils.pytorch_worker_info()
        worker, skip = self._logical_worker(worker, num_workers)
        if self.resampled:
            stages: list = [wds.ResampledShards(self.urls, seed=self.seed * 100_003 + self.epoch, deterministic=True,
                                                worker_seed=lambda: rank * 1000 + worker)]
        else:
            urls = list(self.urls)
            if self.shuffle_shards:
                random.Random(f"mmfm-shards/{self.seed}/{self.epoch}").shuffle(urls)
            stages = [wds.SimpleShardList(urls)]
            if self.split_by_node:
                stages.append(wds.split_by_node)
            if self.split_by_worker and num_workers > 1:
                stages.append(lambda src: itertools.islice(src, worker, None, num_workers))
        # warn_and_continue: an unreadable *tar* (truncated download) is
        # reported and skipped rather than killing the run.
        stages.append(wds.tarfile_to_samples(handler=wds.warn_and_continue))
        if self.shuffle_buffer > 1:
            rng = random.Random(f"mmfm-samples/{self.seed}/{self.epoch}/{rank}/{worker}")
            stages.append(wds.shuffle(self.shuffle_buffer, initial=min(100, self.shuffle_buffer), rng=rng))
        if skip:   # resumed mid-epoch: drop what was trained on, undecoded
            stages.append(lambda src: itertools.islice(src, skip, None))
        return wds.DataPipeline(*stages)

    def located_samples(self) -> Iterator[tuple[int, Sample | None, str]]:
        """``(index, sample, where)``; ``sample`` is ``None`` for a record that
        cannot be decoded, ``where`` names its shard and key for messages."""
        for record in self._pipeline():
            index = _record_index(record)
            where = f"record {record.get('__key__')!r} of shard {record.get('__url__')}"
            try:
                yield index, record_to_sample(record), where
            except (OSError, ValueError) as exc:   # one bad record must not end a days-long run
                logger.warning("skipping %s: %s", where, exc)
                yield index, None, where

    def indexed_samples(self) -> Iterator[tuple[int, Sample | None]]:
        """``(index, sample)`` pairs; ``sample`` is ``None`` for a corrupt record."""
        for index, sample, _ in self.located_samples():
            yield index, sample

    def __iter__(self) -> Iterator[Sample]:
        for _, sample in self.indexed_samples():
            if sample is None:
                self.skipped += 1
                continue
            yield sample

    def with_transforms(
        self,
        image_transform: ImageTransform | None,
        tokenizer: Tokenizer | None,
        caption_mode: CaptionMode = "random",
        seed: int = 0,
        return_attributes: bool = False,
    ) -> ShardImageTextView:
        """The streaming equivalent of
        :class:`~mmfm.data.pipeline.ImageTextView`: same dicts, same caption
        draw from ``(seed, epoch, index)``, ``None`` for corrupt images."""
        encoder = SampleEncoder(
            image_transform,
            tokenizer,
            caption_mode=caption_mode,
            seed=seed,
            classes=self.classes,
            templates=self.templates,
            return_attributes=return_attributes,
        )
        return ShardImageTextView(self, encoder)

    def __repr__(self) -> str:
        return f"ShardDataset({len(self.urls)} shards, name={self.name!r}, num_samples={self.num_samples})"


class ShardImageTextView(torch.utils.data.IterableDataset):
    """Model-ready items streamed from shards (see :meth:`ShardDataset.with_transforms`)."""

    def __init__(self, shards: ShardDataset, encoder: SampleEncoder) -> None:
        super().__init__()
        self.shards = shards
        self.encoder = encoder

    @property
    def classes(self) -> list[str] | None:
        return self.shards.classes

    def set_epoch(self, epoch: int) -> None:
        self.shards.set_epoch(epoch)

    def resume_at(self, batches: int, batch_size: int) -> None:
        self.shards.resume_at(batches, batch_size)

    def zero_shot_tasks(self) -> dict[str, ZeroShotTask]:
        return self.shards.zero_shot_tasks()

    def __iter__(self) -> Iterator[dict[str, Any] | None]:
        for index, sample, where in self.shards.located_samples():
            # None travels to collate_skip_none, which drops and counts it
            if sample is None:
                yield None
                continue
            try:
                yield self.encoder(sample, index, self.shards.epoch)
            except (OSError, ValueError, IndexError) as exc:   # no caption or label, label out of range...
                logger.warning("skipping %s: %s", where, exc)
                yield None
