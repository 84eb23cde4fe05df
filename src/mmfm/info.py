"""``mmfm info``: parameters, weight memory and FLOPs of a model from its config alone (no download)."""
from __future__ import annotations

from typing import Any

import torch

from .measure import count_parameters, weight_memory
from .report import human_bytes, human_count, markdown_table
from .util.weights import meta_copy


def flops_per_image(model) -> int | None:
    """Forward FLOPs of the image tower for one image, counted on a meta-device copy of it (no memory, no
    weights; the given model is not touched)."""
    try:
        from torch.utils.flop_counter import FlopCounterMode
        visual = getattr(model, "visual", None)
        size = getattr(getattr(getattr(model, "config", None), "vision", None), "image_size", None)
        if visual is None or size is None:
            return None
        x = torch.empty(1, 3, size, size, device="meta")
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            meta_copy(visual)(x)
        return int(counter.get_total_flops())
    except Exception:
        return None


def model_info(name: str | None = None, pretrained: str | None = None, model=None, lora: str | None = None) -> dict[str, Any]:
    """Parameter table (total/trainable/frozen per tower), weight memory per precision, FLOPs per image.

    A given ``model`` is left exactly as it was (``lora`` is applied to a meta-device copy of it).
    """
    from .api import create_model
    from .models import build_model, get_model_config
    if model is not None:
        # The caller's model is reported on, never changed: adapters go onto a structural copy (meta device).
        model = meta_copy(model) if lora else model
    else:
        if pretrained is None:
            # Build on the meta device: ViT-L-14 or an 800M Frozen config costs no memory or time.
            with torch.device("meta"):
                model = build_model(get_model_config(name))
        else:
            model = create_model(name, pretrained=pretrained)
    if lora:
        from .adapt import apply_lora
        model = apply_lora(model, preset=lora)
    params = count_parameters(model)
    info = {"model": name, "pretrained": pretrained, "lora": lora, "parameters": params.to_dict(),
            "weight_memory_bytes": weight_memory(params.total)}
    if pretrained is None:
        info["flops_per_image"] = flops_per_image(model)
    return info


def render_info(info: dict[str, Any]) -> str:
    p = info["parameters"]
    rows = [[tower, human_count(c["total"]), c["total"], c["trainable"], c["frozen"]] for tower, c in p["per_tower"].items()]
    rows.append(["**total**", human_count(p["total"]), p["total"], p["trainable"], p["frozen"]])
    out = [f"## {info['model'] or info['pretrained']}" + (f" + LoRA {info['lora']}" if info.get("lora") else ""), "",
           markdown_table(["tower", "params", "total", "trainable", "frozen"], rows), "",
           f"trainable share: {100 * p['trainable_share']:.2f}%", "",
           markdown_table(["precision", "weight memory"], [[k, human_bytes(v)] for k, v in info["weight_memory_bytes"].items()])]
    if info.get("flops_per_image"):
        out += ["", f"image-tower forward FLOPs per image: {info['flops_per_image'] / 1e9:.2f} GFLOP"]
    return "\n".join(out)
