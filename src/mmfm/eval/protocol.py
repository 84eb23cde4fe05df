"""Evaluation protocols: the choices besides the weights that make numbers comparable with a published table.

A *protocol* (:data:`PROTOCOLS`) fixes the class names, the linear-probe method and the default precision
together; :func:`official_val_split` is the one rule for the split the linear probe sweeps C on (the
official Flowers-102/DTD validation split, as the CLIP paper). :func:`mmfm.evaluate.evaluate` applies both,
so `mmfm eval` and `mmfm run` give the same numbers for the same evaluation.
"""
from __future__ import annotations

from dataclasses import dataclass


#: Datasets whose official validation split the linear probe uses for its C sweep (as the CLIP paper).
OFFICIAL_VAL_SPLITS = frozenset({"flowers102", "dtd"})


@dataclass(frozen=True)
class Protocol:
    """What a published table's numbers depend on besides the weights, chosen together."""
    name: str
    probe_method: str               # mmfm.eval.linear_probe method
    gpu_precision: str              # default precision on CUDA (fp32 everywhere on CPU)
    summary: str


PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (
    Protocol("clip_paper", "clip_paper", "fp32",
             "the CLIP paper's: its class names and prompt ensembles; linear probe = L-BFGS logistic regression on "
             "pre-projection features with a C sweep; fp32"),
    Protocol("clip_benchmark", "clip_benchmark", "fp16",
             "clip_benchmark's (open_clip's published tables): torchvision's raw CIFAR-100 names, the same "
             "prompt ensembles; linear probe = a linear layer trained with AdamW on L2-normalised embeddings with "
             "a weight-decay sweep; fp16 on CUDA (clip_benchmark: fp16 autocast), fp32 on CPU; its wds/ data"),
)}

#: Datasets whose images under mmfm's name are not the ones clip_benchmark's published numbers use, and
#: the clip_benchmark dataset that holds those (EuroSAT: mmfm splits the folder 60/20/20 by a seed; the
#: published numbers use VTAB's fixed slice of the TFDS record order).
PUBLISHED_DATA: dict[str, str] = {"eurosat": "wds/vtab/eurosat"}


def get_protocol(name: str) -> Protocol:
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ValueError(f"unknown protocol {name!r}; choose one of {sorted(PROTOCOLS)}") from None


def protocol_precision(protocol: str, device) -> str:
    """The precision a protocol runs a model at by default on ``device``."""
    on_gpu = str(device).startswith("cuda")
    return get_protocol(protocol).gpu_precision if on_gpu else "fp32"


def protocol_data_note(protocol: str, dataset_name: str) -> str | None:
    """Why this dataset's numbers cannot match the protocol's published ones, and what to run instead."""
    wds = PUBLISHED_DATA.get(str(dataset_name).lower())
    if protocol != "clip_benchmark" or wds is None:
        return None
    return (f"{dataset_name}: mmfm's split of the folder is not the images clip_benchmark's published numbers use; "
            f"for those evaluate --dataset {wds} (clip_benchmark's data, --download or a local --data-root)")


def official_val_split(dataset_name: str, val_split: str | None = "auto") -> str | None:
    """The split the linear probe sweeps C on: ``"auto"`` = the official ``"val"`` split of the datasets
    that have one (:data:`OFFICIAL_VAL_SPLITS`), None (carve from train) otherwise; anything else as given."""
    if val_split != "auto":
        return val_split
    return "val" if dataset_name.lower() in OFFICIAL_VAL_SPLITS else None
