"""The embedding index: one folder, plain formats any tool reads (numpy, JSON).

    INDEX/image_embeddings.npy   (N, D) float32, rows of unit length, row i = meta["paths"][i]
    INDEX/text_embeddings.npy    (M, D) float32, row j = meta["texts"][j]   (only when texts were embedded)
    INDEX/meta.json              {"format": "mmfm-index", "version": 1 or 2, "model", "pretrained", "fingerprint",
                                  "precision", "dim", "paths", "texts", "skipped", "created"}
                                 (+ "int8_layers" for int8: the layers' kind, which follows the CPU)
    INDEX/image_embeddings.hnsw  optional (``mmfm embed --ann``): an HNSW graph of the image rows, described by
                                 meta.json's "ann" entry; see :mod:`mmfm.deploy.ann`

``fingerprint`` is :func:`mmfm.util.weights.model_fingerprint` of the model that wrote the embeddings, as it ran
(at its ``precision``: fp32, bf16, fp16 or int8, ``create_model(precision=...)``): a search embeds its query with
the same weights at the same precision or refuses. Version 1 has no ``precision`` (it means fp32); an fp32 index
is still written as version 1, so older mmfm reads it, and a low-precision one as version 2, which older mmfm
refuses ("upgrade mmfm") instead of failing its fingerprint check with a misleading "weights changed".
meta.json is written last, so a reader that finds it finds the arrays it describes; every file goes through :mod:`mmfm.util.atomic`.
"""
from __future__ import annotations

import datetime
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from ..util.atomic import atomic_write, atomic_write_json
from .ann import ANN_FILE, build_hnsw, write_ann

INDEX_FORMAT, INDEX_VERSION = "mmfm-index", 2
PRECISIONS = ("fp32", "bf16", "fp16", "int8")   # what `mmfm embed --precision` can record
_REQUIRED = {"format": str, "version": int, "model": str, "fingerprint": str, "dim": int, "paths": list,
             "texts": list}


@dataclass
class Index:
    image_embeddings: np.ndarray
    meta: dict[str, Any]
    text_embeddings: np.ndarray | None = None
    root: Path | None = field(default=None)

    @property
    def paths(self) -> list[str]:
        return self.meta["paths"]

    @property
    def texts(self) -> list[str]:
        return self.meta["texts"]


def _save_npy(path: Path, array: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
    atomic_write(path, write)


def write_index(out: str | os.PathLike, image_embeddings: np.ndarray, paths: list[str], *, model: str,
                pretrained: str | None, fingerprint: str, precision: str = "fp32", int8_layers: str | None = None,
                texts: list[str] | None = None,
                text_embeddings: np.ndarray | None = None, skipped: list[tuple[str, str]] | None = None,
                ann: bool | dict = False) -> Path:
    """Write an index folder (see the module docstring); returns its path. ``ann``: also build an approximate
    nearest-neighbour graph of the image embeddings (True, or ``deploy.ann.build_hnsw``'s options as a dict).

    Over an older index, its meta.json goes first: until the new one is written last, the folder is no index,
    rather than the old metadata over new arrays (paths naming other rows)."""
    out = Path(out)
    if image_embeddings.ndim != 2 or len(image_embeddings) != len(paths):
        raise ValueError(f"{len(paths)} paths for image embeddings of shape {image_embeddings.shape}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    texts = list(texts or [])
    if (text_embeddings is None) != (not texts) or (texts and len(text_embeddings) != len(texts)):
        raise ValueError("texts and text_embeddings go together, one row per text")
    graph = build_hnsw(image_embeddings, **(ann if isinstance(ann, dict) else {})) if ann else None   # the long part
    (out / "meta.json").unlink(missing_ok=True)
    _save_npy(out / "image_embeddings.npy", image_embeddings)
    if texts:
        _save_npy(out / "text_embeddings.npy", text_embeddings)
    elif (out / "text_embeddings.npy").exists():   # an older index's texts no longer belong here
        (out / "text_embeddings.npy").unlink()
    ann_entry = write_ann(out, graph) if graph is not None else None
    if graph is None:   # nor does an older index's graph
        (out / ANN_FILE).unlink(missing_ok=True)
    atomic_write_json(out / "meta.json", {
        "format": INDEX_FORMAT, "version": 1 if precision == "fp32" else INDEX_VERSION, "model": model,
        "pretrained": pretrained, "fingerprint": fingerprint, "precision": precision,
        **({"int8_layers": int8_layers} if precision == "int8" and int8_layers else {}),
        "dim": int(image_embeddings.shape[1]), "paths": list(paths), "texts": texts,
        "skipped": [{"path": p, "error": why} for p, why in (skipped or [])],
        **({"ann": ann_entry} if ann_entry else {}),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})
    return out


def _read_npy(path: Path, rows: int, dim: int) -> np.ndarray:
    """Header checked before the data is read: a wrong or hostile file costs nothing."""
    if not path.is_file():
        raise UserError(f"index {path.parent}: {path.name} is missing: rebuild the index with `mmfm embed`")
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            shape, fortran, dtype = read[version](f)
        except Exception as e:
            raise UserError(f"index {path.parent}: {path.name} is not a .npy array ({e}): rebuild the index "
                            f"with `mmfm embed`") from None
        if dtype != np.float32 or shape != (rows, dim) or fortran:
            raise UserError(f"index {path.parent}: {path.name} holds {dtype} {shape}, meta.json says float32 "
                            f"({rows}, {dim}): rebuild the index with `mmfm embed`")
    return np.load(path, allow_pickle=False)


def load_index(root: str | os.PathLike) -> Index:
    """Read and validate an index folder written by :func:`write_index` (``mmfm embed``)."""
    root = Path(root)
    meta_path = root / "meta.json"
    if not meta_path.is_file():
        raise UserError(f"{root} is not an index (no meta.json): build one with `mmfm embed ... --out {root}`")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{meta_path} is not valid JSON ({e}): rebuild the index with `mmfm embed`") from None
    if not isinstance(meta, dict) or meta.get("format") != INDEX_FORMAT:
        raise UserError(f"{meta_path} is not an mmfm index's metadata: build one with `mmfm embed`")
    wrong = [k for k, t in _REQUIRED.items() if not isinstance(meta.get(k), t)]
    wrong += ["int8_layers"] * ("int8_layers" in meta and not isinstance(meta["int8_layers"], str))
    if wrong:
        raise UserError(f"{meta_path}: field(s) {', '.join(wrong)} missing or of the wrong type: rebuild the "
                        f"index with `mmfm embed`")
    if meta["version"] > INDEX_VERSION:
        raise UserError(f"{meta_path}: index version {meta['version']} is newer than this mmfm reads "
                        f"({INDEX_VERSION}): upgrade mmfm")
    meta.setdefault("precision", "fp32")   # version 1 predates the field: its embeddings are fp32
    if meta["precision"] not in PRECISIONS:
        raise UserError(f"{meta_path}: precision {meta['precision']!r} is not one of {', '.join(PRECISIONS)}: "
                        f"rebuild the index with `mmfm embed`")
    images = _read_npy(root / "image_embeddings.npy", len(meta["paths"]), meta["dim"])
    texts = _read_npy(root / "text_embeddings.npy", len(meta["texts"]), meta["dim"]) if meta["texts"] else None
    return Index(images, meta, texts, root)


def check_query_precision(index: Index, precision: str) -> None:
    """A query is embedded at the precision of the index's rows, or refused in one line.

    Refused rather than allowed with a note: the cosines printed belong to one model as it ran (its fingerprint
    is taken at its precision, and int8 even differs by CPU), and the fix costs nothing (the index's precision
    is the default); mixing would give scores of neither protocol."""
    have = index.meta["precision"]
    if precision != have:
        raise UserError(f"index {index.root} holds {have} embeddings and a query embedded in {precision} would be "
                        f"compared across precisions: use --precision {have} (the default with this index), or "
                        f"rebuild the index with `mmfm embed --precision {precision}`")


def check_int8_layers(index: Index, model) -> None:
    """An int8 index is queried through int8 layers of the kind that embedded it, or refused in one line.

    The kind follows the CPU (VNNI or not: ``models.precision.int8_layers``), so an int8 index built on one
    machine can fail its fingerprint on another with unchanged weights; saying "weights changed" there would
    send the user after the wrong fix."""
    from ..models.precision import cpu_has_vnni, int8_layers
    have, here = index.meta.get("int8_layers"), int8_layers(model)
    if have is not None and here is not None and have != here:
        raise UserError(f"index {index.root} was embedded by int8 layers with {have}; on this CPU "
                        f"({'with' if cpu_has_vnni() else 'without'} VNNI) they run with {here}, which gives other "
                        f"embeddings from the same weights: rebuild the index here with `mmfm embed --precision "
                        f"int8`, or at fp32 or bf16 to search it on any machine")


def check_query_model(index: Index, model, mismatch: str) -> None:
    """The model that embeds queries must be the one that built the index, as it ran: the same precision, the
    same kind of int8 layers, the same weights (its fingerprint); else one line, ``mismatch`` for the weights.
    In that order: each earlier check names the real fix where a fingerprint alone would say "weights"."""
    from ..util.weights import model_fingerprint
    check_query_precision(index, model_precision(model))
    check_int8_layers(index, model)
    if model_fingerprint(model) != index.meta["fingerprint"]:
        raise UserError(mismatch)


def model_precision(model) -> str:
    """The precision a model runs at, as ``create_model(precision=...)`` names it: what an index records."""
    import torch

    from ..models.precision import is_int8, module_dtype
    if is_int8(model):
        return "int8"
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(module_dtype(model), "fp32")
