"""WebDataset shards as a map-style dataset, for evaluation: ``get_dataset("shards", root=DIR)``.

Evaluation needs what :class:`~mmfm.data.shards.ShardDataset` (a stream, for training) cannot give:
a length, and sample *i* on demand (features in dataset order, every caption of image *i* for
retrieval). :class:`ShardFolder` reads the tar headers once, remembers where each member's bytes are,
and decodes a record only when asked, with the same :func:`~mmfm.data.shards.record_to_sample` as the
stream. The ``<prefix>.json`` that ``write_shards`` (and ``mmfm shards``) put next to the shards says
which shards belong to the set, and gives the class names and templates, so zero-shot tasks are the
source dataset's.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

from .base import MultimodalDataset, Sample
from .custom import SHARED_FILE_SPLITS

__all__ = ["ShardFolder"]


def _key_and_extension(member_name: str) -> tuple[str, str]:
    """WebDataset's grouping rule: the key is the path up to the first dot of the file name."""
    folder, _, base = member_name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _shard_set(folder: Path) -> tuple[list[Path], dict]:
    """The shards to read and their metadata: the ones a ``write_shards`` metadata file lists (a folder
    rewritten with fewer samples still holds the old run's last shards), else every ``.tar``."""
    sets = []
    for path in sorted(folder.glob("*.json")):
        try:
            meta = json.loads(path.read_text())
        except (OSError, ValueError):
            continue                      # some other JSON file, not shard metadata
        if isinstance(meta, dict) and isinstance(meta.get("shards"), list):
            sets.append((path, meta))
    if len(sets) > 1:
        raise ValueError(f"{folder} holds several shard sets ({', '.join(p.name for p, _ in sets)}): "
                         f"give each its own folder")
    if not sets:
        return sorted(folder.glob("*.tar")), {}
    path, meta = sets[0]
    names = meta["shards"]
    if not all(isinstance(n, str) and n.endswith(".tar") and Path(n).name == n for n in names):
        raise ValueError(f"{path}: 'shards' must list .tar file names in {folder}; rewrite them with mmfm shards")
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{path} lists {len(missing)} shard(s) that are missing, e.g. {missing[:3]}; "
                                f"rewrite them with mmfm shards")
    return [folder / n for n in names], meta


class ShardFolder(MultimodalDataset):
    """Every record of the ``*.tar`` shards in a folder, in shard and tar order.

    Args:
        root: the folder the shards are in (``mmfm shards --out``).
        split: ``<root>/<split>/`` if that folder holds shards; otherwise the shards in ``root`` serve as
            test data (and only as test data: other splits need a folder of their own).
    """

    def __init__(self, root: str | Path, split: str | None = None) -> None:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"shard folder not found: {root} (--data-root)")
        folder = root / split if split and any((root / split).glob("*.tar")) else root
        tars, meta = _shard_set(folder)
        if not tars:
            raise FileNotFoundError(f"no .tar shards in {folder}; write them with: mmfm shards --out {folder} ...")
        if folder == root and split not in SHARED_FILE_SPLITS:
            raise ValueError(f"shards: no {split} split in {root} (its shards are used as test data only); put "
                             f"the {split} shards in {root / split}/")
        self.root, self.split = str(folder), split
        # Names, sizes and modification times: what the content of this dataset depends on (cache keys).
        self.shards = [[t.name, t.stat().st_size, t.stat().st_mtime_ns] for t in tars]
        self._records: list[dict[str, tuple[str, int, int]]] = []
        for tar in tars:
            self._index(tar)
        if meta.get("num_samples") not in (None, len(self._records)):
            raise ValueError(f"the shards in {folder} hold {len(self._records)} samples, their metadata says "
                             f"{meta['num_samples']}: rewrite them with mmfm shards")
        self.name = meta.get("name") or "shards"
        self.label_name = meta.get("label_name") or "label"
        self.classes = meta.get("classes")
        self.attribute_classes = meta.get("attribute_classes") or {}
        self.templates = meta.get("templates") or list(MultimodalDataset.templates)
        self.attribute_templates = meta.get("attribute_templates") or {}

    def _index(self, tar: Path) -> None:
        """Where the bytes of each member are, grouped into records by key."""
        by_key: dict[str, dict[str, tuple[str, int, int]]] = {}
        try:
            with tarfile.open(tar) as tf:
                for member in tf:
                    if member.isfile():
                        key, ext = _key_and_extension(member.name)
                        by_key.setdefault(key, {})[ext] = (str(tar), member.offset_data, member.size)
        except tarfile.TarError as exc:
            raise ValueError(f"{tar} is not a readable tar file ({exc}); rewrite it with mmfm shards") from None
        self._records.extend(by_key.values())

    def __len__(self) -> int:
        return len(self._records)

    def _record(self, i: int) -> dict:
        record: dict = {"__key__": str(i)}
        for ext, where in self._records[i].items():
            record[ext] = self._read(where)
        return record

    def get_sample(self, i: int) -> Sample:
        from .shards import record_to_sample
        # OSError for an undecodable image: skipped by the pipeline. Captions and labels come from here too
        # (one decoder of records); retrieval then decodes each image twice, which an evaluation set affords.
        return record_to_sample(self._record(i))

    @staticmethod
    def _read(where: tuple[str, int, int]) -> bytes:
        path, offset, size = where
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(size)

    def __repr__(self) -> str:
        return f"ShardFolder(root={self.root!r}, split={self.split!r}, len={len(self)}, shards={len(self.shards)})"
