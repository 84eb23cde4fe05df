"""Published results shipped with mmfm: open_clip's zero-shot and Flickr30k retrieval table.

``published.json`` (next to this file) holds, for the pretrained weights mmfm can load, the numbers
open_clip publishes (``docs/openclip_results.csv`` and ``docs/openclip_retrieval_results.csv``, at the
commit the file names), with the protocol they were measured under (clip_benchmark; fp16 on GPU).
Nothing here is computed: every value was read from that source.

``mmfm published [MODEL [PRETRAINED]]`` prints the table; ``mmfm.evaluate.run_eval`` (``mmfm eval``)
puts the published value, the reproduced one and their difference beside every evaluation of known
weights on a known dataset (``result.config["published"]``, shown in the result's markdown).
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from ..report.tables import markdown_table

PUBLISHED_FILE = Path(__file__).with_name("published.json")

#: How clip_benchmark / DataComp spell the datasets -> mmfm's dataset names.
DATASET_ALIASES = {"wds/cifar10": "cifar10", "wds/cifar100": "cifar100", "wds/vtab/cifar100": "cifar100",
                   "vtab/cifar100": "cifar100", "wds/food101": "food101", "wds/vtab/flowers": "flowers102",
                   "vtab/flowers": "flowers102", "flowers": "flowers102", "wds/vtab/dtd": "dtd", "vtab/dtd": "dtd",
                   "wds/vtab/eurosat": "eurosat", "vtab/eurosat": "eurosat", "wds/flickr30k": "flickr30k",
                   "retrieval/flickr30k": "flickr30k"}
KINDS = {"zeroshot": "zeroshot", "zero_shot": "zeroshot", "retrieval": "retrieval"}
ZEROSHOT_COLUMNS = ["cifar10", "cifar100", "food101", "flowers102", "dtd", "eurosat"]
RETRIEVAL_COLUMNS = ["t2i_R@1", "i2t_R@1"]


@functools.lru_cache(maxsize=1)
def load_published() -> dict[str, Any]:
    """The shipped table as stored (values are fractions, as in open_clip's files)."""
    return json.loads(PUBLISHED_FILE.read_text())


def _model_key(model: str) -> str:
    # open_clip's -quickgelu configs carry the same weights as the plain names for these tags
    return model.removesuffix("-quickgelu")


def _entry(model: str, pretrained: str) -> dict[str, Any] | None:
    for e in load_published()["models"]:
        if e["model"] == _model_key(model) and e["pretrained"] == pretrained:
            return e
    return None


def canonical_dataset(name: str) -> str:
    return DATASET_ALIASES.get(name.lower(), name.lower())


def published_metrics(model: str, pretrained: str, dataset: str, kind: str) -> dict[str, float] | None:
    """``{metric: value}`` open_clip publishes for these weights on ``dataset`` (mmfm's metric names:
    ``top1``, ``mean_per_class`` for Flowers-102, ``t2i_R@K`` / ``i2t_R@K``), or None if it has none."""
    entry, kind = _entry(model, pretrained), KINDS.get(kind)
    if entry is None or kind is None:
        return None
    dataset = canonical_dataset(dataset)
    value = entry.get(kind, {}).get(dataset)
    if value is None:
        return None
    if kind == "retrieval":
        return dict(value)
    metrics = load_published()["protocol"]["metric"]
    return {metrics.get(dataset, metrics["default"]): value}


def compare_with_published(result, model: str, pretrained: str, dataset: str, **settings: Any) -> dict[str, Any] | None:
    """Published, reproduced and their difference (reproduced - published) for ``result``, with the
    source and protocol they belong to; None when open_clip publishes nothing for this cell.
    ``settings``: how mmfm ran (precision, device, ...), recorded beside the protocol."""
    published = published_metrics(model, pretrained, dataset, result.kind)
    if not published:
        return None
    ours = result.headline()
    rows = []
    for metric, value in published.items():
        mine = ours.get(metric)
        rows.append({"metric": metric, "published": value, "reproduced": mine,
                     "difference": None if mine is None else mine - value})
    doc = load_published()
    note = doc["protocol"]["dataset_notes"].get(canonical_dataset(dataset))
    src = doc["source"]
    return {"model": _model_key(model), "pretrained": pretrained, "dataset": canonical_dataset(dataset), "rows": rows,
            "source": f"{src['repository']} {src['files'][KINDS[result.kind]]} @ {src['commit'][:12]}",
            "protocol": doc["protocol"]["summary"] + (f" {note[0].upper()}{note[1:]}." if note else ""),
            **settings}


def _pct(v: float | None, sign: bool = False, digits: int = 1) -> str:
    return "–" if v is None else f"{100 * v:+.{digits}f}" if sign else f"{100 * v:.{digits}f}"


def comparison_markdown(comp: dict[str, Any]) -> str:
    """The published-vs-reproduced block of a result's markdown."""
    mine = ", ".join(f"{k.replace('_used', '')} {v}" for k, v in comp.items()
                     if k in ("protocol_used", "precision", "device"))
    rows = [[r["metric"], _pct(r["published"], digits=2), _pct(r["reproduced"], digits=2),
             _pct(r["difference"], True, digits=2)] for r in comp["rows"]]          # in %, as the metrics above
    lines = [f"Published ({comp['model']} {comp['pretrained']} on {comp['dataset']}; {comp['source']}):", "",
             markdown_table(["metric", "published", "reproduced", "difference"], rows, align="lrrr")]
    lines += ["", f"Published protocol: {comp['protocol']}" + (f" Reproduced here: {mine}." if mine else "")]
    return "\n".join(lines)


def published_table(model: str | None = None, pretrained: str | None = None) -> str:
    """Markdown of the shipped table (all weights, one model's, or one model + tag), with its source."""
    doc = load_published()
    entries = [e for e in doc["models"] if (model is None or e["model"] == _model_key(model))
               and (pretrained is None or e["pretrained"] == pretrained)]
    if not entries:
        known = sorted({e["model"] for e in doc["models"]})
        if model is not None and _model_key(model) in known:
            tags = [e["pretrained"] for e in doc["models"] if e["model"] == _model_key(model)]
            raise ValueError(f"open_clip publishes no results for {model} {pretrained!r}; its tags with results: "
                             f"{', '.join(tags)}")
        raise ValueError(f"open_clip publishes no results for {model!r} among mmfm's models; models with results: "
                         f"{', '.join(known)} (`mmfm published MODEL` lists their tags)")
    head = ["model", "pretrained"] + ZEROSHOT_COLUMNS + [f"flickr30k {c}" for c in RETRIEVAL_COLUMNS]
    rows = [[e["model"], e["pretrained"]] + [_pct(e.get("zeroshot", {}).get(d)) for d in ZEROSHOT_COLUMNS]
            + [_pct(e.get("retrieval", {}).get("flickr30k", {}).get(c)) for c in RETRIEVAL_COLUMNS] for e in entries]
    lines = [markdown_table(head, rows, align="ll" + "r" * (len(head) - 2))]
    src, proto = doc["source"], doc["protocol"]
    lines += ["", "Zero-shot top-1 % (Flowers-102: mean per-class recall %); Flickr30k: recall@1 % of text->image "
                  "(t2i) and image->text (i2t) retrieval.",
              f"Source: {src['repository']} {src['files']['zeroshot']} and {src['files']['retrieval']} at commit "
              f"{src['commit']}.",
              f"Protocol: {proto['summary']}"]
    return "\n".join(lines)


def loadable_pretrained() -> list[tuple[str, str, bool]]:
    """(model, tag, has published results) for every open_clip pretrained tag of mmfm's registered
    configs: the tags ``create_model(MODEL, pretrained=TAG)`` can download (open_clip's registry)."""
    try:
        import open_clip
    except ImportError:
        raise ValueError("pretrained tags are looked up in open_clip's registry, which is not installed: "
                         "pip install open_clip_torch (or pass local checkpoints / hf-hub: ids)") from None
    from ..models import list_models
    out = []
    for model in list_models():
        for tag in open_clip.list_pretrained_tags_by_model(model):
            out.append((model, tag, _entry(model, tag) is not None))
    return out


def published_comparison(result, model_name: str | None, pretrained: str | None, dataset: str, **settings):
    """open_clip's published value beside ``result`` when the weights are a pretrained tag it has results
    for (``MODEL`` + ``TAG``, or ``TAG/MODEL`` / ``MODEL/TAG``); never for a local checkpoint."""
    if not pretrained or Path(str(pretrained)).expanduser().exists():
        return None
    pretrained = str(pretrained)
    pairs = [(model_name, pretrained)] if model_name and "/" not in pretrained else []
    if pretrained.count("/") == 1:
        a, b = pretrained.split("/")
        pairs += [(b, a), (a, b)]
    for model, tag in pairs:
        comp = compare_with_published(result, model, tag, dataset, **settings)
        if comp:
            return comp
    return None
