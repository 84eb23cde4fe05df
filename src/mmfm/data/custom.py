"""Custom data: an image folder plus a CSV / JSONL annotation file.

Typical layouts::

    my_data/
      captions.csv         path,caption            (or path,label)
      images/cat1.jpg      images/cat1.jpg,a cat on a sofa
      ...                  images/cat1.jpg,a sleepy cat        <- same image, 2nd caption

    my_data/annotations.jsonl
      {"image": "images/cat1.jpg", "caption": "a cat on a sofa", "label": "cat"}
      {"image": "images/dog.png", "captions": ["a dog", "a brown dog"]}

Rows that name the same image are merged into one sample with several
captions.  Labels are mapped to class indices (sorted unique label names).

Everything that can be checked cheaply is checked in the constructor, before
any training starts: the annotation file exists and parses, the columns
exist, and every referenced image file exists.  Decoding every image would be
too slow for large folders, so corrupt files are only found when loaded; the
pipeline then skips them (see :mod:`mmfm.data.pipeline`).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .base import DEFAULT_TEMPLATES, MultimodalDataset, Sample, load_image

__all__ = ["CustomDataset", "custom_dataset", "find_annotations", "read_annotations"]

#: Column names tried, in order, when ``image_column`` is not given.
IMAGE_COLUMN_CANDIDATES = ("path", "image", "image_path", "file", "filename", "file_name", "img")
#: Annotation files looked for in the data folder when none is named: ``<split>.<ext>``, then these.
ANNOTATION_STEMS = ("captions", "annotations", "labels")
ANNOTATION_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json")
#: Splits a single annotations file may stand for (evaluation); others need a file of their own.
SHARED_FILE_SPLITS = (None, "test")
_MAX_LISTED = 5  # how many missing files an error message shows


def read_annotations(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Read a ``.csv``/``.tsv``/``.jsonl``/``.json`` file into row dicts.

    Returns ``(rows, columns)``; ``columns`` is the union of keys, in first-seen
    order, used to produce helpful "missing column" errors.
    """
    if not path.is_file():
        raise FileNotFoundError(f"annotations file not found: {path}")
    suffix = path.suffix.lower()
    rows: list[dict[str, Any]]
    if suffix in (".csv", ".tsv"):
        with path.open(newline="", encoding="utf-8-sig") as f:  # -sig: tolerate Excel's BOM
            reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
            rows = [dict(r) for r in reader]
            columns = list(reader.fieldnames or [])
        return rows, columns
    if suffix == ".jsonl":
        rows = []
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{lineno}: invalid JSON: {exc}") from exc
                if not isinstance(row, dict):
                    raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
                rows.append(row)
    elif suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise ValueError(f"{path}: expected a JSON list of objects")
        rows = data
    else:
        raise ValueError(f"unsupported annotations format {suffix!r} ({path}); use .csv, .tsv, .jsonl or .json")
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    return rows, columns


def _as_list(value: Any) -> list[str]:
    """A caption cell as a list of non-empty strings (JSON may hold a list)."""
    if value is None:
        return []
    if isinstance(value, list):
        return [str(v).strip() for v in value if v is not None and str(v).strip()]
    text = str(value).strip()
    return [text] if text else []


def _sort_labels(names: set[str]) -> list[str]:
    """Sorted label names; numerically if they are all integers ("2" < "10")."""
    try:
        return sorted(names, key=int)
    except ValueError:
        return sorted(names)


class CustomDataset(MultimodalDataset):
    """Images in a folder described by a CSV/TSV/JSONL/JSON annotation file.

    Args:
        root: folder the image paths are relative to.
        annotations: annotation file, relative to ``root`` or absolute.
        image_column: column holding the image path; by default the first of
            :data:`IMAGE_COLUMN_CANDIDATES` present in the file.
        caption_column: column holding captions (a string, or in JSON a list
            of strings).  ``None`` for label-only data.  If the default
            ``"caption"`` is absent but ``captions`` is present, that is used;
            if neither is there and ``label_column`` is set, the data is
            treated as label-only.
        label_column: optional column holding class labels (any strings);
            ``"auto"``: ``"label"`` if the file has that column, else none.
        classes: optional explicit class list (fixes the label order, e.g. to
            share a label space with another dataset); by default the sorted
            unique labels.
        templates: caption templates for label-only samples and zero-shot.
        name: dataset name used in logs.

    Raises:
        FileNotFoundError: missing annotation file or image files.
        ValueError: missing columns, empty data, unknown or conflicting labels,
            samples with neither a caption nor a label.
    """

    def __init__(
        self,
        root: str | Path,
        annotations: str | Path = "captions.csv",
        image_column: str | None = None,
        caption_column: str | None = "caption",
        label_column: str | None = None,
        classes: Sequence[str] | None = None,
        templates: Sequence[str] | None = None,
        name: str = "custom",
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.root}")
        ann = Path(annotations)
        self.annotations = ann if ann.is_absolute() else self.root / ann
        self.name = name
        rows, columns = read_annotations(self.annotations)
        if not rows:
            raise ValueError(f"{self.annotations} contains no rows")

        def missing(kind: str, col: str) -> ValueError:
            return ValueError(
                f"{self.annotations}: {kind} column {col!r} not found; available columns: {columns}"
            )

        # ---- resolve columns (fail fast, listing what *is* there)
        if image_column is None:
            image_column = next((c for c in IMAGE_COLUMN_CANDIDATES if c in columns), None)
            if image_column is None:
                raise ValueError(
                    f"{self.annotations}: no image column found (tried {list(IMAGE_COLUMN_CANDIDATES)}); "
                    f"available columns: {columns}; pass image_column="
                )
        elif image_column not in columns:
            raise missing("image", image_column)
        if label_column == "auto":
            label_column = "label" if "label" in columns else None
        if label_column is not None and label_column not in columns:
            raise missing("label", label_column)
        if caption_column is not None and caption_column not in columns:
            if caption_column == "caption" and "captions" in columns:
                caption_column = "captions"
            elif caption_column == "caption" and label_column is not None:
                caption_column = None  # label-only data with the default caption column
            else:
                raise missing("caption", caption_column)
        if caption_column is None and label_column is None:
            raise ValueError("need a caption_column or a label_column (or both)")
        self.image_column, self.caption_column, self.label_column = image_column, caption_column, label_column

        # ---- group rows by image, keeping first-appearance order
        captions: dict[str, list[str]] = {}
        raw_labels: dict[str, str] = {}
        for n, row in enumerate(rows, 1):
            rel = str(row.get(image_column) or "").strip()
            if not rel:
                raise ValueError(f"{self.annotations}: row {n} has an empty {image_column!r}")
            caps = captions.setdefault(rel, [])
            if caption_column is not None:
                caps.extend(c for c in _as_list(row.get(caption_column)) if c not in caps)
            if label_column is not None:
                value = row.get(label_column)
                if value is None or str(value).strip() == "":
                    continue
                value = str(value).strip()
                if raw_labels.setdefault(rel, value) != value:
                    raise ValueError(
                        f"{self.annotations}: image {rel!r} has conflicting labels {raw_labels[rel]!r} and {value!r}"
                    )
        self.paths = list(captions)
        self.captions = [captions[p] for p in self.paths]

        # ---- labels -> indices
        if label_column is not None:
            names = set(raw_labels.values())
            self.classes = list(classes) if classes is not None else _sort_labels(names)
            unknown = sorted(names - set(self.classes))
            if unknown:
                raise ValueError(f"labels not in classes: {unknown[:_MAX_LISTED]}")
            index = {c: k for k, c in enumerate(self.classes)}
            self.labels: list[int | None] = [
                index[raw_labels[p]] if p in raw_labels else None for p in self.paths
            ]
        else:
            self.classes = list(classes) if classes is not None else None
            self.labels = [None] * len(self.paths)
        self.attribute_classes = {}
        self.templates = list(templates) if templates is not None else list(DEFAULT_TEMPLATES)

        # ---- every sample needs some text
        textless = [p for p, c, y in zip(self.paths, self.captions, self.labels, strict=True) if not c and y is None]
        if textless:
            raise ValueError(
                f"{len(textless)} image(s) have neither a caption nor a label, e.g. {textless[:_MAX_LISTED]}"
            )

        # ---- every image file must exist (cheap stat, no decoding)
        absent = [p for p in self.paths if not self._resolve(p).is_file()]
        if absent:
            raise FileNotFoundError(
                f"{len(absent)} of {len(self.paths)} image files referenced by {self.annotations} "
                f"do not exist under {self.root}, e.g. {absent[:_MAX_LISTED]}"
            )

    def _resolve(self, rel: str) -> Path:
        p = Path(rel)
        return p if p.is_absolute() else self.root / p

    def __len__(self) -> int:
        return len(self.paths)

    def image_path(self, i: int) -> Path:
        return self._resolve(self.paths[i])

    def get_captions(self, i: int) -> list[str]:
        return list(self.captions[i])

    def get_label(self, i: int) -> int | None:
        return self.labels[i]

    def get_sample(self, i: int) -> Sample:
        # load_image raises ImageLoadError (an OSError) for corrupt files;
        # ImageTextView turns that into a skipped item.
        return Sample(image=load_image(self.image_path(i)), captions=self.get_captions(i), label=self.labels[i])


# ---------------------------------------------------------------------------------------------
def find_annotations(root: str | Path, split: str | None = None, annotations: str | Path | None = None) -> Path:
    """The annotations file of ``split`` in the data folder ``root``.

    ``annotations`` names it (relative to ``root`` or absolute; ``"{split}"`` in it is replaced by the
    split). Without it, ``<split>.csv`` (or .tsv/.jsonl/.json) is looked for, then ``captions.csv``,
    ``annotations.csv``, ``labels.csv`` (same suffixes). One file that is not per split serves as test
    data only: training and testing on the same rows (a linear probe, few-shot) would report numbers
    measured on the training data.
    """
    root = Path(root)
    if annotations is not None:
        text = str(annotations)
        per_split = "{split}" in text
        if per_split:
            if split is None:
                raise ValueError(f"annotations {text!r} has a {{split}} but no split was asked for")
            text = text.replace("{split}", split)
        path = Path(text) if Path(text).is_absolute() else root / text
        candidates = [path]
    else:
        per_split = split is not None
        stems = ([split] if split else []) + [s for s in ANNOTATION_STEMS if s != split]
        candidates = [root / f"{stem}{suffix}" for stem in stems for suffix in ANNOTATION_SUFFIXES]
    for path in candidates:
        if not path.is_file():
            continue
        is_split_file = per_split and (annotations is not None or path.stem == split)
        if not is_split_file and split not in SHARED_FILE_SPLITS:
            raise ValueError(
                f"custom data: no {split} annotations in {root} (the one file {path.name} is used as test data "
                f"only); put the {split} rows in {split}.csv, or name one file per split with "
                f"--annotations '{{split}}.csv' (annotations= in Python)")
        return path
    if annotations is not None:
        raise FileNotFoundError(f"annotations file not found: {candidates[0]}")
    names = ", ".join(p.name for p in candidates if p.suffix == ".csv")
    raise FileNotFoundError(
        f"no annotations file in {root} (looked for {names} and the same as .tsv/.jsonl/.json); name it with "
        f"--annotations FILE (annotations= in Python)")


def custom_dataset(root: str | Path, split: str | None = None, annotations: str | Path | None = None,
                   image_column: str | None = None, caption_column: str | None = "caption",
                   label_column: str | None = "auto", classes: Sequence[str] | None = None,
                   templates: Sequence[str] | None = None, name: str = "custom") -> CustomDataset:
    """``get_dataset("custom", root=..., split=..., annotations=...)``: the split's annotations file
    (see :func:`find_annotations`), with a ``label`` column used as labels when there is one; the other
    arguments are :class:`CustomDataset`'s."""
    if not Path(root).is_dir():
        raise FileNotFoundError(f"image folder not found: {root} (--data-root)")
    path = find_annotations(root, split, annotations)
    return CustomDataset(root, annotations=path, image_column=image_column, caption_column=caption_column,
                         label_column=label_column, classes=classes, templates=templates, name=name)
